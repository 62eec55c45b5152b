package main

import "github.com/spf13/cobra"

func (a *app) drillCmd() *cobra.Command {
	return notYet("drill", "Restore sample tenants into a scratch database and report")
}

func (a *app) agentCmd() *cobra.Command {
	return notYet("agent", "Run scheduled snapshots, retention and drills")
}

func (a *app) pruneCmd() *cobra.Command {
	return notYet("prune", "Apply retention to snapshot sets")
}
