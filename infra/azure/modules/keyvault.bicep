// Key Vault (RBAC authorization) holding the service's secrets. The Function App reads
// them through Key Vault references; AKS through the CSI driver; APIM through a
// Key Vault-backed named value. Nobody gets access policies.
param location string
param tags object
param name string
@description('Principal id of the app identity (Key Vault Secrets User).')
param principalId string
@secure()
param apiKeyPepper string
@secure()
param modelApiKey string
@secure()
param functionHostKey string

var keyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: { family: 'A', name: 'standard' }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
  }
}

// Names match sk_core/secrets.py (API_KEY_PEPPER, MODEL_API_KEY).
resource pepper 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'api-key-pepper'
  properties: { value: apiKeyPepper, contentType: 'text/plain' }
}

resource modelKey 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(modelApiKey)) {
  parent: vault
  name: 'model-api-key'
  properties: { value: modelApiKey, contentType: 'text/plain' }
}

resource hostKey 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'functions-apim-key'
  properties: { value: functionHostKey, contentType: 'text/plain' }
}

resource appSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, principalId, keyVaultSecretsUser)
  scope: vault
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
  }
}

output name string = vault.name
output uri string = vault.properties.vaultUri
// Versionless URIs: Key Vault references pick up a rotated value without a redeploy.
output pepperSecretUri string = '${vault.properties.vaultUri}secrets/${pepper.name}'
// Only meaningful when a model key was given (main.bicep decides).
output modelApiKeySecretUri string = '${vault.properties.vaultUri}secrets/model-api-key'
output functionHostKeySecretUri string = '${vault.properties.vaultUri}secrets/${hostKey.name}'
