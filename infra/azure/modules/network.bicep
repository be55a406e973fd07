// Private networking (main.bicep networkIsolation=true): a VNet with a subnet the Function
// App integrates with (outbound) and one for private endpoints; private endpoints and
// private DNS zones for the storage account (blob, queue, table), the Key Vault and the
// Azure AI Search service (document memory), whose
// public endpoints main.bicep then turns off. Application Insights ingestion, Azure OpenAI
// and API Management stay on public endpoints (see infra/README.md).
param location string
param tags object
param name string
param addressPrefix string
@description('Subnet for the Function App integration (a /24 leaves room to scale out).')
param appSubnetPrefix string
@description('Subnet for the private endpoints.')
param endpointSubnetPrefix string
param storageAccountId string
param keyVaultId string
param searchServiceId string

// Storage sub-resources the app uses: blob (host storage, deployment package), queue
// (host), table (tenants, keys, usage ledger).
var storageServices = ['blob', 'queue', 'table']
var storageZones = [for service in storageServices: 'privatelink.${service}.${environment().suffixes.storage}']
var vaultZone = 'privatelink.vaultcore.azure.net'
var searchZone = 'privatelink.search.windows.net'

// Subnets deny inbound from the internet; outbound is what the app needs.
resource nsg 'Microsoft.Network/networkSecurityGroups@2024-05-01' = {
  name: '${name}-nsg'
  location: location
  tags: tags
  properties: {
    securityRules: []
  }
}

resource vnet 'Microsoft.Network/virtualNetworks@2024-05-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    addressSpace: { addressPrefixes: [addressPrefix] }
    subnets: [
      {
        // Flex Consumption VNet integration needs a subnet delegated to Microsoft.App/environments.
        name: 'app'
        properties: {
          addressPrefix: appSubnetPrefix
          networkSecurityGroup: { id: nsg.id }
          delegations: [
            {
              name: 'flex-consumption'
              properties: { serviceName: 'Microsoft.App/environments' }
            }
          ]
        }
      }
      {
        name: 'private-endpoints'
        properties: {
          addressPrefix: endpointSubnetPrefix
          networkSecurityGroup: { id: nsg.id }
          privateEndpointNetworkPolicies: 'Enabled'
        }
      }
    ]
  }
}

resource storageDns 'Microsoft.Network/privateDnsZones@2024-06-01' = [for zone in storageZones: {
  name: zone
  location: 'global'
  tags: tags
}]

resource storageDnsLinks 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2024-06-01' = [for (zone, i) in storageZones: {
  parent: storageDns[i]
  name: '${name}-link'
  location: 'global'
  tags: tags
  properties: {
    registrationEnabled: false
    virtualNetwork: { id: vnet.id }
  }
}]

resource storageEndpoints 'Microsoft.Network/privateEndpoints@2024-05-01' = [for (service, i) in storageServices: {
  name: 'pe-${name}-st-${service}'
  location: location
  tags: tags
  properties: {
    subnet: { id: vnet.properties.subnets[1].id }
    privateLinkServiceConnections: [
      {
        name: 'storage-${service}'
        properties: {
          privateLinkServiceId: storageAccountId
          groupIds: [service]
        }
      }
    ]
  }
}]

resource storageDnsGroups 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-05-01' = [for (service, i) in storageServices: {
  parent: storageEndpoints[i]
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [
      {
        name: service
        properties: { privateDnsZoneId: storageDns[i].id }
      }
    ]
  }
}]

resource vaultDns 'Microsoft.Network/privateDnsZones@2024-06-01' = {
  name: vaultZone
  location: 'global'
  tags: tags
}

resource vaultDnsLink 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2024-06-01' = {
  parent: vaultDns
  name: '${name}-link'
  location: 'global'
  tags: tags
  properties: {
    registrationEnabled: false
    virtualNetwork: { id: vnet.id }
  }
}

resource vaultEndpoint 'Microsoft.Network/privateEndpoints@2024-05-01' = {
  name: 'pe-${name}-kv'
  location: location
  tags: tags
  properties: {
    subnet: { id: vnet.properties.subnets[1].id }
    privateLinkServiceConnections: [
      {
        name: 'vault'
        properties: {
          privateLinkServiceId: keyVaultId
          groupIds: ['vault']
        }
      }
    ]
  }
}

resource vaultDnsGroup 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-05-01' = {
  parent: vaultEndpoint
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [
      {
        name: 'vault'
        properties: { privateDnsZoneId: vaultDns.id }
      }
    ]
  }
}

resource searchDns 'Microsoft.Network/privateDnsZones@2024-06-01' = {
  name: searchZone
  location: 'global'
  tags: tags
}

resource searchDnsLink 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2024-06-01' = {
  parent: searchDns
  name: '${name}-link'
  location: 'global'
  tags: tags
  properties: {
    registrationEnabled: false
    virtualNetwork: { id: vnet.id }
  }
}

resource searchEndpoint 'Microsoft.Network/privateEndpoints@2024-05-01' = {
  name: 'pe-${name}-srch'
  location: location
  tags: tags
  properties: {
    subnet: { id: vnet.properties.subnets[1].id }
    privateLinkServiceConnections: [
      {
        name: 'search'
        properties: {
          privateLinkServiceId: searchServiceId
          groupIds: ['searchService']
        }
      }
    ]
  }
}

resource searchDnsGroup 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-05-01' = {
  parent: searchEndpoint
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [
      {
        name: 'search'
        properties: { privateDnsZoneId: searchDns.id }
      }
    ]
  }
}

output appSubnetId string = vnet.properties.subnets[0].id
output endpointSubnetPrefix string = endpointSubnetPrefix
