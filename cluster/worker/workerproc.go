package worker

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"time"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/cluster"
	"github.com/moetrain/moetrain/cluster/pki"
	"github.com/moetrain/moetrain/collective"
)

// WorkerOptions are the flags of `worker --join`.
type WorkerOptions struct {
	Join        string // coordinator control-plane address
	Token       string
	Host        string // reported host name; "" = os.Hostname
	BindIP      string // data-plane/gossip IP; "" = the IP that routes to the coordinator
	Threads     int    // kernel thread budget (and the cores reported); 0 = all
	LogFile     string // JSON log lines; "" = none
	Console     io.Writer
	Verbose     bool
	JoinTimeout time.Duration
	Membership  cluster.MembershipConfig
	// TLS names this worker's certificate, key and the CA that signed the
	// coordinator's (--tls-cert, --tls-key, --tls-ca); none = cleartext.
	TLS pki.Files
	// TCPCongestion is the data plane's TCP congestion control
	// (collective.TCPConfig.Congestion's syntax; "" = its default).
	TCPCongestion string
	// ProcsPerCore: see AgentConfig; 0 = $MOETRAIN_PROCS_PER_CORE (set by
	// `coordinator launch`), else not known.
	ProcsPerCore float64
}

// RunWorkerProcess is the body of a worker process: logs, then RunAgent.
func RunWorkerProcess(ctx context.Context, o WorkerOptions) error {
	if o.Join == "" {
		return fmt.Errorf("--join ADDR is required (the coordinator's control-plane address); to train alone use `worker train --standalone`")
	}
	o.Token = cluster.TokenOrEnv(o.Token)
	if o.Token == "" {
		return fmt.Errorf("--token is required (or set %s): the job token the coordinator was started with", cluster.TokenEnv)
	}
	if o.ProcsPerCore <= 0 {
		o.ProcsPerCore = cluster.ProcsPerCoreFromEnv()
	}
	if o.Threads < 0 {
		return fmt.Errorf("--threads %d: must be ≥ 0 (0 = all cores)", o.Threads)
	}
	if err := collective.CheckCongestion(o.TCPCongestion); err != nil {
		return fmt.Errorf("--tcp-congestion: %w", err)
	}
	var tlsCfg *tls.Config
	if o.TLS.Enabled() {
		var err error
		if tlsCfg, err = o.TLS.ClientConfig(); err != nil {
			return err
		}
	}
	lvl := zerolog.InfoLevel
	if o.Verbose {
		lvl = zerolog.DebugLevel
	}
	lg, closer, err := cluster.NewLogger(cluster.LogOptions{File: o.LogFile, Console: o.Console, Level: lvl})
	if err != nil {
		return err
	}
	defer closer.Close()
	if tlsCfg == nil {
		lg.Warn().Msg("control plane in cleartext: no TLS configured (--tls-cert, --tls-key, --tls-ca); " +
			"this worker does not check that the coordinator is the job's")
	}
	return RunAgent(ctx, AgentConfig{
		Coordinator: o.Join, Token: o.Token, TLS: tlsCfg, Host: o.Host, BindIP: o.BindIP, Cores: o.Threads,
		JoinTimeout: o.JoinTimeout, Membership: o.Membership, Log: lg, TCPCongestion: o.TCPCongestion,
		ProcsPerCore: o.ProcsPerCore, Runner: CoordinatedRunner(o.Join, tlsCfg, o.ProcsPerCore),
	})
}
