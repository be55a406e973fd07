// sk-functions on Azure: Function App (Flex Consumption) behind API Management.
// Deployed by azd (azure.yaml beside this file): `cd infra/azure && azd up`.
targetScope = 'subscription'

@minLength(1)
@maxLength(40)
@description('azd environment name; names and tags every resource.')
param environmentName string

@minLength(1)
@description('Region of every resource (Flex Consumption must be available there).')
param location string

@secure()
@minLength(16)
@description('SKF_API_KEY_PEPPER: the HMAC pepper of tenant API keys, stored in Key Vault. Changing it invalidates every key.')
param apiKeyPepper string

@secure()
@description('Optional provider key (SKF_MODEL_API_KEY), stored in Key Vault. Empty: Azure OpenAI through the managed identity.')
param modelApiKey string = ''

// checkov:skip=CKV_AZURE_131: newGuid() is a fresh value per deployment, not a hardcoded one
@secure()
@description('Function host key that API Management sends as x-functions-key. The default rotates it on every deployment (both sides in one deployment).')
param functionHostKey string = newGuid()

@description('https://<resource>.openai.azure.com (SKF_AZURE_OPENAI_ENDPOINT).')
param azureOpenAiEndpoint string

@description('Azure OpenAI deployment name (SKF_MODEL_ID).')
param modelDeployment string

@description('Resource id of the Azure OpenAI account, for the Cognitive Services OpenAI User role. Empty: assign it yourself.')
param openAiResourceId string = ''

@description('SKF_MODEL_PRICES: JSON prices for a deployment name the built-in list does not know.')
param modelPrices string = ''

@minValue(0)
@maxValue(20)
@description('Flex Consumption always-ready instances for the HTTP triggers (0 = scale to zero, cold starts).')
param alwaysReadyInstanceCount int = 1

@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

@allowed([2048, 4096])
param instanceMemoryMB int = 2048

@description('Spread the Function App over availability zones (at least two always-ready instances, billed as such). false in a region without Flex Consumption zone support: az functionapp list-flexconsumption-locations --zone-redundant.')
param zoneRedundant bool = true

@description('Private networking: a VNet, the Function App integrated with it, private endpoints + private DNS zones for Storage (blob, queue, table) and Key Vault, and their public endpoints off. false: public endpoints, Entra ID / RBAC only.')
param networkIsolation bool = false

@description('networkIsolation only: the VNet, the Function App subnet and the private-endpoint subnet.')
param vnetAddressPrefix string = '10.60.0.0/16'
param appSubnetPrefix string = '10.60.0.0/24'
param privateEndpointSubnetPrefix string = '10.60.1.0/24'

@allowed(['basic', 'standard', 'standard2', 'standard3'])
@description('Azure AI Search tier of document memory\'s vector store (the embedded SQLite store is local only: Functions instances do not share a disk).')
param searchSku string = 'basic'

@minValue(1)
@maxValue(12)
@description('Azure AI Search replicas: 2 for the read SLA, 3 for the read-write SLA.')
param searchReplicaCount int = 1

@description('Azure OpenAI embedding deployment for document memory (SKF_MEMORY_EMBEDDING_MODEL).')
param embeddingDeployment string = 'text-embedding-3-small'

@allowed(['Developer', 'Basic', 'Standard', 'Premium', 'BasicV2', 'StandardV2'])
@description('API Management tier. Not Consumption: rate-limit-by-key is unavailable there.')
param apimSku string = 'BasicV2'

@description('Publisher e-mail shown by API Management.')
param apimPublisherEmail string

param apimPublisherName string = 'sk-functions'

@description('Requests per minute per APIM subscription (coarse gateway limit; tenants have their own limits in the app).')
param apimCallsPerMinute int = 600

var tags = { 'azd-env-name': environmentName, application: 'sk-functions' }
var token = toLower(uniqueString(subscription().id, environmentName, location))

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    location: location
    tags: tags
    logAnalyticsName: 'log-${token}'
    appInsightsName: 'appi-${token}'
  }
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    location: location
    tags: tags
    name: 'id-skf-${token}'
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    location: location
    tags: tags
    name: 'stskf${take(token, 16)}'
    deploymentContainerName: 'app-package-${take(token, 20)}'
    principalId: identity.outputs.principalId
    networkIsolation: networkIsolation
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    location: location
    tags: tags
    name: 'kv-skf-${take(token, 14)}'
    principalId: identity.outputs.principalId
    networkIsolation: networkIsolation
    apiKeyPepper: apiKeyPepper
    modelApiKey: modelApiKey
    functionHostKey: functionHostKey
  }
}

module search 'modules/search.bicep' = {
  name: 'search'
  scope: rg
  params: {
    location: location
    tags: tags
    name: 'srch-skf-${token}'
    principalId: identity.outputs.principalId
    sku: searchSku
    replicaCount: searchReplicaCount
    networkIsolation: networkIsolation
  }
}

module network 'modules/network.bicep' = if (networkIsolation) {
  name: 'network'
  scope: rg
  params: {
    location: location
    tags: tags
    name: 'vnet-skf-${token}'
    addressPrefix: vnetAddressPrefix
    appSubnetPrefix: appSubnetPrefix
    endpointSubnetPrefix: privateEndpointSubnetPrefix
    storageAccountId: storage.outputs.id
    keyVaultId: keyVault.outputs.id
    searchServiceId: search.outputs.id
  }
}

// /subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.CognitiveServices/accounts/<name>
var openAiIdParts = split(empty(openAiResourceId) ? '/subscriptions/${subscription().subscriptionId}/resourceGroups/${rg.name}/providers/x/y/none' : openAiResourceId, '/')

module openAiRole 'modules/openai-role.bicep' = if (!empty(openAiResourceId)) {
  name: 'openai-role'
  scope: resourceGroup(openAiIdParts[2], openAiIdParts[4])
  params: {
    accountName: last(openAiIdParts)
    principalId: identity.outputs.principalId
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  scope: rg
  params: {
    location: location
    tags: tags
    planName: 'plan-skf-${token}'
    appName: 'func-skf-${token}'
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    identityPrincipalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    storageBlobEndpoint: storage.outputs.blobEndpoint
    storageTableEndpoint: storage.outputs.tableEndpoint
    deploymentContainerName: storage.outputs.deploymentContainerName
    appInsightsName: monitoring.outputs.appInsightsName
    pepperSecretUri: keyVault.outputs.pepperSecretUri
    modelApiKeySecretUri: empty(modelApiKey) ? '' : keyVault.outputs.modelApiKeySecretUri
    functionHostKey: functionHostKey
    azureOpenAiEndpoint: azureOpenAiEndpoint
    modelDeployment: modelDeployment
    modelPrices: modelPrices
    alwaysReadyInstanceCount: alwaysReadyInstanceCount
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    zoneRedundant: zoneRedundant
    appSubnetId: networkIsolation ? network.outputs.appSubnetId : ''
    searchEndpoint: search.outputs.endpoint
    embeddingDeployment: embeddingDeployment
  }
}

module apim 'modules/apim.bicep' = {
  name: 'apim'
  scope: rg
  params: {
    location: location
    tags: tags
    name: 'apim-skf-${token}'
    sku: apimSku
    publisherEmail: apimPublisherEmail
    publisherName: apimPublisherName
    appInsightsName: monitoring.outputs.appInsightsName
    keyVaultName: keyVault.outputs.name
    functionKeySecretUri: keyVault.outputs.functionHostKeySecretUri
    functionHostKey: functionHostKey
    vaultIsPrivate: networkIsolation
    backendUrl: 'https://${functionApp.outputs.defaultHostName}'
    callsPerMinute: apimCallsPerMinute
  }
}

// Read by azd (`azd env get-values`) and by the CI smoke tests.
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output FUNCTION_APP_URL string = 'https://${functionApp.outputs.defaultHostName}'
output APIM_GATEWAY_URL string = apim.outputs.gatewayUrl
output APIM_API_URL string = '${apim.outputs.gatewayUrl}/${apim.outputs.apiPath}'
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output IDENTITY_CLIENT_ID string = identity.outputs.clientId
output STORAGE_TABLE_ENDPOINT string = storage.outputs.tableEndpoint
output NETWORK_ISOLATION bool = networkIsolation
output MEMORY_SEARCH_ENDPOINT string = search.outputs.endpoint
