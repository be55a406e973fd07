// Function App on Flex Consumption (Linux, Python 3.11) running function_app.py, as the
// user-assigned identity. Secrets are Key Vault references, never values.
param location string
param tags object
param planName string
param appName string
param identityId string
param identityClientId string
param identityPrincipalId string
param storageAccountName string
param storageBlobEndpoint string
param storageTableEndpoint string
param deploymentContainerName string
param appInsightsName string
param pepperSecretUri string
@description('Empty when the model is reached with Entra ID.')
param modelApiKeySecretUri string
@secure()
param functionHostKey string
param azureOpenAiEndpoint string
param modelDeployment string
param modelPrices string
param alwaysReadyInstanceCount int
param maximumInstanceCount int
param instanceMemoryMB int
@description('Spread instances over availability zones (the platform then keeps at least two always-ready instances).')
param zoneRedundant bool
@description('Subnet (delegated to Microsoft.App/environments) for outbound VNet integration; empty: none.')
param appSubnetId string
@description('Document memory: the Azure AI Search endpoint (Entra ID, no key) and the embedding deployment.')
param searchEndpoint string
param embeddingDeployment string

var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  // checkov:skip=CKV_AZURE_225: zoneRedundant is the parameter of that name (default true); checkov does not evaluate parameters
  properties: {
    reserved: true
    zoneRedundant: zoneRedundant
  }
}

var baseSettings = [
  // Host storage through the managed identity (the account has shared keys disabled).
  { name: 'AzureWebJobsStorage__accountName', value: storageAccountName }
  { name: 'AzureWebJobsStorage__credential', value: 'managedidentity' }
  { name: 'AzureWebJobsStorage__clientId', value: identityClientId }
  { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: appInsights.properties.ConnectionString }
  { name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING', value: 'ClientId=${identityClientId};Authorization=AAD' }
  // The FastAPI HTTP extension (azurefunctions-extensions-http-fastapi) needs it.
  { name: 'PYTHON_ENABLE_INIT_INDEXING', value: '1' }
  // DefaultAzureCredential (storage tables, Azure OpenAI) uses this identity.
  { name: 'AZURE_CLIENT_ID', value: identityClientId }
  { name: 'SKF_ENVIRONMENT', value: 'production' }
  { name: 'SKF_MODEL_PROVIDER', value: 'azure_openai' }
  { name: 'SKF_AZURE_OPENAI_ENDPOINT', value: azureOpenAiEndpoint }
  { name: 'SKF_AZURE_OPENAI_API_VERSION', value: '2024-10-21' }
  { name: 'SKF_MODEL_ID', value: modelDeployment }
  { name: 'SKF_MODEL_PRICES', value: modelPrices }
  { name: 'SKF_MODEL_TIMEOUT_SECONDS', value: '30' }
  { name: 'SKF_MODEL_MAX_RETRIES', value: '2' }
  { name: 'SKF_MODEL_DEADLINE_SECONDS', value: '60' }
  { name: 'SKF_MAX_BODY_BYTES', value: '102400' }
  { name: 'SKF_READY_TIMEOUT_SECONDS', value: '2' }
  { name: 'SKF_STORAGE_ACCOUNT_ENDPOINT', value: storageTableEndpoint }
  { name: 'SKF_STORAGE_TABLE_PREFIX', value: 'skf' }
  { name: 'SKF_HOLD_LEASE_SECONDS', value: '300' }
  // The memory_ingest_worker queue trigger's %SKF_MEMORY_QUEUE_NAME% (must resolve at startup).
  { name: 'SKF_MEMORY_QUEUE_NAME', value: 'skf-memory-ingest' }
  // Document memory in Azure: chunks in Azure AI Search (the app identity's data roles,
  // no key), embeddings from the Azure OpenAI account of the chat settings.
  { name: 'SKF_MEMORY_STORE', value: 'azure_ai_search' }
  { name: 'SKF_MEMORY_SEARCH_ENDPOINT', value: searchEndpoint }
  { name: 'SKF_MEMORY_EMBEDDER', value: 'azure_openai' }
  { name: 'SKF_MEMORY_EMBEDDING_MODEL', value: embeddingDeployment }
  { name: 'SKF_API_KEY_PEPPER', value: '@Microsoft.KeyVault(SecretUri=${pepperSecretUri})' }
]
// Only when the provider key comes from Key Vault; Entra ID otherwise.
var modelKeySetting = empty(modelApiKeySecretUri) ? [] : [
  { name: 'SKF_MODEL_API_KEY', value: '@Microsoft.KeyVault(SecretUri=${modelApiKeySecretUri})' }
]

// 'http' groups every HTTP trigger; the timer trigger (expire_holds) scales on its own.
var alwaysReady = [
  {
    name: 'http'
    instanceCount: alwaysReadyInstanceCount
  }
]

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: appName
  location: location
  // azd deploys the `api` service of azure.yaml to the resource with this tag.
  tags: union(tags, { 'azd-service-name': 'api' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${identityId}': {} }
  }
  // checkov:skip=CKV_AZURE_222: API Management (BasicV2, outside any VNet) calls the app on its public endpoint with a function host key; callers never see that key
  // checkov:skip=CKV_AZURE_17: callers authenticate at APIM (subscription key) and to the app (tenant API key) over TLS; mTLS between APIM and the app is not set up
  // checkov:skip=CKV_AZURE_212: numberOfWorkers is a Dedicated-plan setting; on Flex Consumption the minimum is alwaysReady (and 2 across zones with zoneRedundant)
  // checkov:skip=CKV_AZURE_213: Flex Consumption has no platform health check; /api/health and /api/ready are there for APIM and the CI smoke test
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    virtualNetworkSubnetId: empty(appSubnetId) ? null : appSubnetId
    // Key Vault references resolve with the user-assigned identity.
    keyVaultReferenceIdentity: identityId
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storageBlobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        alwaysReady: alwaysReadyInstanceCount > 0 ? alwaysReady : []
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: concat(baseSettings, modelKeySetting)
    }
  }
}

// A dedicated host key for API Management (also stored in Key Vault as
// functions-apim-key, which APIM's named value reads).
resource apimHostKey 'Microsoft.Web/sites/host/functionKeys@2024-04-01' = {
  name: '${functionApp.name}/default/apim-gateway'
  properties: {
    name: 'apim-gateway'
    value: functionHostKey
  }
}

// Entra ID ingestion into Application Insights.
resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, identityPrincipalId, monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
  }
}

output name string = functionApp.name
output defaultHostName string = functionApp.properties.defaultHostName
