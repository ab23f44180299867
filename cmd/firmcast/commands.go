package main

import "github.com/spf13/cobra"

// commands lists the top-level commands. Each lives in its own file.
func commands() []*cobra.Command {
	return []*cobra.Command{
		newVersionCmd(),
		newKeysCmd(),
		newManifestCmd(),
		newImageCmd(), newDeviceCmd(), newGroupCmd(), newCampaignCmd(), newAPIKeyCmd(), newAuditCmd(), newUpdateCmd(), newFleetCmd(),
		newBootCmd(),
		newDemoCmd(),
		newSimCmd(),
		newBenchCmd(),
		newServeCmd(), newBrokerCmd(),
	}
}
