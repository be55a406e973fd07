// Storage account: the Functions host storage (AzureWebJobsStorage, identity-based), the
// Flex Consumption deployment package container, the service's tables (tenants, keys,
// usage ledger) and document memory's ingestion queue. Shared keys are disabled: every
// client uses Entra ID.
param location string
param tags object
param name string
param deploymentContainerName string
@description('Principal id of the managed identity the app runs as.')
param principalId string
@description('true: no public endpoint (private endpoints in modules/network.bicep); false: public endpoint, Entra ID only.')
param networkIsolation bool

var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
}

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: { name: 'Standard_ZRS' }
  // checkov:skip=CKV_AZURE_206: ZRS survives a zone loss; geo-replication would not make a region failover work on its own (the Function App, Key Vault and APIM are single-region)
  // checkov:skip=CKV_AZURE_35: with networkIsolation=false (the simple option) Flex Consumption reaches storage from unpredictable public addresses, so the default action must be Allow (Entra ID only, shared keys off); networkIsolation=true sets Deny
  // checkov:skip=CKV_AZURE_59: the same trade; networkIsolation=true sets publicNetworkAccess Disabled
  properties: {
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: networkIsolation ? 'Disabled' : 'Enabled'
    networkAcls: {
      defaultAction: networkIsolation ? 'Deny' : 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: { publicAccess: 'None' }
}

// Host storage (leases, timer-trigger schedule monitor, keys) and the deployment package:
// Flex Consumption reads the package from the container with this identity.
resource blobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, principalId, roles.storageBlobDataOwner)
  scope: account
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
  }
}

// The tenants / API keys / usage ledger tables (SKF_STORAGE_ACCOUNT_ENDPOINT).
resource tableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, principalId, roles.storageTableDataContributor)
  scope: account
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
  }
}

// Document memory's ingestion queue: the API sends, the queue trigger (AzureWebJobsStorage,
// identity-based) receives, deletes and poisons; the first send creates the queue.
resource queueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, principalId, roles.storageQueueDataContributor)
  scope: account
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
  }
}

output name string = account.name
output id string = account.id
output blobEndpoint string = account.properties.primaryEndpoints.blob
output tableEndpoint string = account.properties.primaryEndpoints.table
output deploymentContainerName string = deploymentContainer.name
