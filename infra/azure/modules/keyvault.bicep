// Key Vault (RBAC authorization) holding the service's secrets. The Function App reads
// them through Key Vault references; AKS through the CSI driver; APIM through a
// Key Vault-backed named value. Nobody gets access policies.
param location string
param tags object
param name string
@description('Principal id of the app identity (Key Vault Secrets User).')
param principalId string
@description('true: no public endpoint (a private endpoint in modules/network.bicep); false: public endpoint, RBAC only.')
param networkIsolation bool
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
  // checkov:skip=CKV_AZURE_189: with networkIsolation=false (the simple option) the Function App resolves Key Vault references and APIM reads its named value from public addresses, so public access stays on (RBAC only); networkIsolation=true disables it
  // checkov:skip=CKV_AZURE_109: the same trade; networkIsolation=true sets the firewall's default action to Deny
  properties: {
    tenantId: subscription().tenantId
    sku: { family: 'A', name: 'standard' }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: networkIsolation ? 'Disabled' : 'Enabled'
    networkAcls: {
      defaultAction: networkIsolation ? 'Deny' : 'Allow'
      bypass: 'AzureServices'
    }
  }
}

// Names match sk_core/secrets.py (API_KEY_PEPPER, MODEL_API_KEY).
resource pepper 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'api-key-pepper'
  // checkov:skip=CKV_AZURE_41: an expired secret stops resolving and takes the service down; the pepper is rotated by hand (changing it invalidates every API key), see infra/README.md
  properties: { value: apiKeyPepper, contentType: 'text/plain' }
}

resource modelKey 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(modelApiKey)) {
  parent: vault
  name: 'model-api-key'
  // checkov:skip=CKV_AZURE_41: expiry is the provider key's own (rotate it at the provider, then here); a Key Vault expiry would only cut the service off first
  // checkov:skip=CKV_AZURE_114: contentType is set below; checkov does not read the properties of this conditional resource
  properties: { value: modelApiKey, contentType: 'text/plain' }
}

resource hostKey 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'functions-apim-key'
  // checkov:skip=CKV_AZURE_41: rotated on every deployment (main.bicep functionHostKey = newGuid()); an expiry would cut APIM off from the app between deployments
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
output id string = vault.id
output uri string = vault.properties.vaultUri
// Versionless URIs: Key Vault references pick up a rotated value without a redeploy.
output pepperSecretUri string = '${vault.properties.vaultUri}secrets/${pepper.name}'
// Only meaningful when a model key was given (main.bicep decides).
output modelApiKeySecretUri string = '${vault.properties.vaultUri}secrets/model-api-key'
output functionHostKeySecretUri string = '${vault.properties.vaultUri}secrets/${hostKey.name}'
