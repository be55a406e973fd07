// Azure AI Search: document memory's vector store in Azure (SKF_MEMORY_STORE=azure_ai_search).
// One index holds every tenant's chunks, scoped by a filterable field the app sets and
// filters on (sk_core/memory). No admin key leaves the service: local (key) auth is off
// and the app's identity gets data-plane roles (Entra ID, DefaultAzureCredential).
param location string
param tags object
param name string
param principalId string

@allowed(['basic', 'standard', 'standard2', 'standard3'])
param sku string

@minValue(1)
@maxValue(12)
@description('Replicas: 2 for the read SLA, 3 for the read-write SLA.')
param replicaCount int

@description('Private networking: no public endpoint (network.bicep adds its private endpoint).')
param networkIsolation bool

var searchIndexDataContributor = '8ebe5a00-799e-43f5-93ac-243d3dce84a7'
// Creates the index on first use (ensure_collection_exists) and reads its definition.
var searchServiceContributor = '7ca78c08-252a-4471-8644-bb5ff32d4ba0'

resource search 'Microsoft.Search/searchServices@2023-11-01' = {
  // checkov:skip=CKV_AZURE_124: publicNetworkAccess follows networkIsolation (disabled with it); checkov does not evaluate parameters
  // checkov:skip=CKV_AZURE_208: replicaCount is the parameter of that name (3 for the read-write SLA); checkov does not evaluate parameters
  // checkov:skip=CKV_AZURE_209: replicaCount is the parameter of that name (2 for the read SLA); checkov does not evaluate parameters
  name: name
  location: location
  tags: tags
  sku: { name: sku }
  identity: { type: 'SystemAssigned' }
  properties: {
    replicaCount: replicaCount
    partitionCount: 1
    hostingMode: 'default'
    disableLocalAuth: true
    publicNetworkAccess: networkIsolation ? 'disabled' : 'enabled'
    semanticSearch: 'disabled'
  }
}

resource indexData 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(search.id, principalId, searchIndexDataContributor)
  scope: search
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', searchIndexDataContributor)
  }
}

resource serviceContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(search.id, principalId, searchServiceContributor)
  scope: search
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', searchServiceContributor)
  }
}

output id string = search.id
output endpoint string = 'https://${search.name}.search.windows.net'
