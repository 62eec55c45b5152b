package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/tenantvault/tenantvault/agent"
)

type agentOptions struct {
	check bool
	init  bool
}

func (a *app) agentCmd() *cobra.Command {
	var o agentOptions
	cmd := &cobra.Command{
		Use:   "agent --config FILE [--check]",
		Short: "Run scheduled snapshots, verification, retention and purge",
		Long: `Run as a long-lived agent: snapshot each source of the YAML config on its
cron schedule (with jitter, retries with backoff, a per-run timeout and a
PostgreSQL advisory lock per source so that replicas take turns), verify each
new set, mark the sets retention no longer keeps, purge marked sets once
their grace period has passed, and serve /metrics, /healthz and /readyz.

--check validates the config and exits 2 listing every problem, or 0 with a
one-line summary. The first SIGTERM or SIGINT stops scheduling and lets a
running snapshot finish for up to shutdown_timeout, then cancels it; a
second one cancels at once. See docs/agent.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.runAgent(cmd, &o) },
	}
	cmd.Flags().BoolVar(&o.check, "check", false, "validate the config, print every problem (exit 2) or a summary (exit 0), and exit")
	cmd.Flags().BoolVar(&o.init, "init", false, "create the bucket or directory and the repository when missing (as init: true)")
	return cmd
}

func (a *app) runAgent(cmd *cobra.Command, o *agentOptions) error {
	if a.configFile == "" {
		return &usageError{"--config FILE is required (the agent's YAML config; see docs/agent.md)"}
	}
	cfg, err := agent.LoadFile(a.configFile, os.Getenv)
	var problems agent.Problems
	if errors.As(err, &problems) {
		for _, p := range problems {
			fmt.Fprintf(a.stderr, "%s: %s\n", a.configFile, p)
		}
		return &silentError{code: exitUsage}
	}
	if err != nil {
		return err
	}
	if o.check {
		fmt.Fprintln(a.stdout, cfg.Summary())
		return nil
	}
	if o.init {
		cfg.Init = true
	}
	// The config's log settings apply unless given on the command line or
	// in the environment (which bind marks as changed).
	fs := cmd.Flags()
	if !fs.Changed("log-format") {
		a.logFormat = cfg.LogFormat
	}
	if !fs.Changed("log-level") {
		a.logLevel = cfg.LogLevel
	}
	if err := a.setupLogging(); err != nil {
		return err
	}
	ag := agent.New(cfg, agent.Options{Logger: a.log, Version: version})
	log := ag.Logger()

	// The root context ends on the first signal, which for the agent means
	// "drain", not "cancel now": jobs get a context of their own, cancelled
	// only by a second signal or by the shutdown timeout inside Stop.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	jobs, cancelJobs := context.WithCancel(context.WithoutCancel(cmd.Context()))
	defer cancelJobs()
	if err := ag.Start(jobs); err != nil {
		return err
	}
	s := <-sigs
	log.Info("signal received: draining (send it again to cancel running snapshots now)", "signal", s.String())
	stopped := make(chan struct{})
	go func() { ag.Stop(); close(stopped) }()
	select {
	case <-stopped:
	case s := <-sigs:
		log.Warn("second signal: cancelling running snapshots", "signal", s.String())
		cancelJobs()
		<-stopped
	}
	return nil
}
