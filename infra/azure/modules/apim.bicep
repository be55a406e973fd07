// API Management in front of the Function App: the API is imported from the generated
// OpenAPI document (infra/azure/openapi.json, a copy of GET /api/openapi.json that the
// tests keep identical), subscription keys are required, and apim-policy.xml applies.
param location string
param tags object
param name string
@allowed(['Developer', 'Basic', 'Standard', 'Premium', 'BasicV2', 'StandardV2'])
param sku string
param publisherEmail string
param publisherName string
param appInsightsName string
param keyVaultName string
@description('Versionless Key Vault URI of the function host key (secret functions-apim-key).')
param functionKeySecretUri string
@secure()
@description('The same function host key, stored as an APIM secret when the vault has no public endpoint.')
param functionHostKey string
@description('true: the vault is private (networkIsolation) and APIM, outside the VNet, cannot read it.')
param vaultIsPrivate bool
@description('https://<function app host>: the OpenAPI paths already start with /api.')
param backendUrl string
param callsPerMinute int

var keyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'
var apiPath = 'sk'

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource service 'Microsoft.ApiManagement/service@2024-05-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: sku
    capacity: 1
  }
  // checkov:skip=CKV_AZURE_107: API Management is the public front door by design (subscription key + tenant API key); VNet injection needs the Premium tier
  // checkov:skip=CKV_AZURE_174: the same: callers reach the API through this gateway's public endpoint
  identity: { type: 'SystemAssigned' }
  properties: {
    publisherEmail: publisherEmail
    publisherName: publisherName
  }
}

// APIM reads the function key from Key Vault with its own identity.
resource apimSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, service.id, keyVaultSecretsUser)
  scope: vault
  properties: {
    principalId: service.identity.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
  }
}

// {{skf-function-key}} in apim-policy.xml: a Key Vault reference, or (private vault) the
// value itself as an APIM secret, replaced on every deployment like the vault's copy.
resource functionKey 'Microsoft.ApiManagement/service/namedValues@2024-05-01' = {
  parent: service
  name: 'skf-function-key'
  properties: vaultIsPrivate ? {
    displayName: 'skf-function-key'
    secret: true
    value: functionHostKey
  } : {
    displayName: 'skf-function-key'
    secret: true
    keyVault: {
      secretIdentifier: functionKeySecretUri
    }
  }
  dependsOn: [apimSecretsUser]
}

// {{skf-calls-per-minute}} in apim-policy.xml.
resource callsNamedValue 'Microsoft.ApiManagement/service/namedValues@2024-05-01' = {
  parent: service
  name: 'skf-calls-per-minute'
  properties: {
    displayName: 'skf-calls-per-minute'
    value: string(callsPerMinute)
  }
}

// backend-id="skf-functions" in apim-policy.xml.
resource backend 'Microsoft.ApiManagement/service/backends@2024-05-01' = {
  parent: service
  name: 'skf-functions'
  properties: {
    protocol: 'http'
    url: backendUrl
    description: 'sk-functions Function App (Flex Consumption)'
    tls: {
      validateCertificateChain: true
      validateCertificateName: true
    }
  }
}

resource logger 'Microsoft.ApiManagement/service/loggers@2024-05-01' = {
  parent: service
  name: 'appinsights'
  properties: {
    loggerType: 'applicationInsights'
    resourceId: appInsights.id
    credentials: {
      connectionString: appInsights.properties.ConnectionString
    }
  }
}

resource api 'Microsoft.ApiManagement/service/apis@2024-05-01' = {
  parent: service
  name: 'sk-functions'
  properties: {
    displayName: 'sk-functions'
    path: apiPath
    protocols: ['https']
    apiType: 'http'
    format: 'openapi+json'
    value: loadTextContent('../openapi.json')
    serviceUrl: backendUrl
    subscriptionRequired: true
    subscriptionKeyParameterNames: {
      header: 'Ocp-Apim-Subscription-Key'
      query: 'subscription-key'
    }
  }
}

resource apiPolicy 'Microsoft.ApiManagement/service/apis/policies@2024-05-01' = {
  parent: api
  name: 'policy'
  properties: {
    format: 'xml'
    value: loadTextContent('../apim-policy.xml')
  }
  dependsOn: [functionKey, callsNamedValue, backend]
}

// W3C trace context end to end, and custom metrics (emit-metric) enabled.
resource diagnostics 'Microsoft.ApiManagement/service/apis/diagnostics@2024-05-01' = {
  parent: api
  name: 'applicationinsights'
  properties: {
    loggerId: logger.id
    alwaysLog: 'allErrors'
    httpCorrelationProtocol: 'W3C'
    verbosity: 'information'
    metrics: true
    sampling: {
      samplingType: 'fixed'
      percentage: 100
    }
  }
}

resource product 'Microsoft.ApiManagement/service/products@2024-05-01' = {
  parent: service
  name: 'sk-functions'
  properties: {
    displayName: 'sk-functions'
    description: 'Semantic Kernel prompt functions. Tenants also need an sk-functions API key (X-API-Key).'
    subscriptionRequired: true
    approvalRequired: true
    state: 'published'
  }
}

resource productApi 'Microsoft.ApiManagement/service/products/apis@2024-05-01' = {
  parent: product
  name: api.name
}

output gatewayUrl string = service.properties.gatewayUrl
output apiPath string = apiPath
