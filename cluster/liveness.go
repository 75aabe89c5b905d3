package cluster

import (
	"context"
	"math"
	"net"
	"os"
	"strconv"
	"time"
)

// Failure detection tells a dead worker from a starved one
// (docs/control-plane.md#membership-and-failure-detection):
//
//   - A dead process is found by what the kernel does when it exits: its
//     sockets close, so the command stream ends, its peers' data-plane links
//     read EOF or a reset, and a launcher gets the exit status. None of these
//     waits for a timeout.
//   - A dead host or a cut network is found by the kernel's TCP keepalive and
//     TCP_USER_TIMEOUT on the control-plane connections (controlKeepAlive):
//     probes are answered by the peer's kernel, not by the process, so a
//     process that is alive but gets no CPU still answers them.
//   - Only what needs the process itself to answer (gRPC keepalive pings,
//     gossip probes and the refutation of a gossip death) is bounded by
//     timeouts, and those scale with the job's size and with how many worker
//     processes share a core (LivenessBound, ScaleMembership).

// Kernel keepalive of every control-plane connection: a connection idle for
// controlKeepIdle is probed every controlKeepInterval, and one whose peer's
// kernel answers neither probes nor data for controlUserTimeout is closed
// (Linux: TCP_USER_TIMEOUT; elsewhere the probe count). About 6 s from a
// cut to the error, whatever the load of the processes at either end.
const (
	controlKeepIdle     = 2 * time.Second
	controlKeepInterval = time.Second
	controlKeepCount    = 4
	controlUserTimeout  = 6 * time.Second
)

// controlKeepAlive is the kernel keepalive configuration of control-plane
// connections.
var controlKeepAlive = net.KeepAliveConfig{Enable: true, Idle: controlKeepIdle, Interval: controlKeepInterval, Count: controlKeepCount}

// Application-level (HTTP/2) keepalive of the control plane: both ends
// ping after keepaliveTime without traffic and drop a peer that has not
// answered within its LivenessBound (the worker, which does not know the
// world yet, takes a world of 1). These catch a process that is alive but
// never runs (frozen, or its host's link is down so the kernel cannot even
// send); dead processes and unreachable hosts are found by the kernel.
const keepaliveTime = 2 * time.Second

// ProcsPerCoreEnv carries, from `coordinator launch` to its worker
// processes, how many worker processes share a core on this host (see
// LivenessBound). Unset: 1.
const ProcsPerCoreEnv = "MOETRAIN_PROCS_PER_CORE"

// ProcsPerCoreFromEnv reads ProcsPerCoreEnv (0 when unset or not a
// positive number).
func ProcsPerCoreFromEnv() float64 {
	v, err := strconv.ParseFloat(os.Getenv(ProcsPerCoreEnv), 64)
	if err != nil || !(v > 0) || math.IsInf(v, 0) {
		return 0
	}
	return v
}

// ScaleMembership slows the gossip failure detector down where many worker
// processes share a core (procsPerCore above 4): probe interval, probe
// timeout and gossip interval times procsPerCore/4. Starved members then
// miss fewer probes (each false death costs a round of refutation traffic
// when CPU is scarcest); gossip is not what finds a dead process there (its
// sockets close). Zero fields take memberlist's LAN timings first.
func ScaleMembership(cfg MembershipConfig, procsPerCore float64) MembershipConfig {
	cfg = withLANDefaults(cfg)
	f := procsPerCore / 4
	if !(f > 1) {
		return cfg
	}
	f = min(f, 16)
	scale := func(d time.Duration) time.Duration { return time.Duration(float64(d) * f) }
	cfg.ProbeInterval, cfg.ProbeTimeout, cfg.GossipInterval = scale(cfg.ProbeInterval), scale(cfg.ProbeTimeout), scale(cfg.GossipInterval)
	return cfg
}

// WorldMembership bounds the gossip failure detector's timings for a job
// of world workers whose processes have about a core each (procsPerCore at
// most 4; 0 = not known), so that a dead member is dead in every view
// within seconds at any size (docs/planner.md#control-plane-scale).
// memberlist declares an unrefuted suspect dead after
// SuspicionMult·log10(members)·ProbeInterval, and with a multiplier above 2
// it first waits for confirmations from other members, up to 6 times as
// long while they are missing (slow in a small job, where few members
// probe the suspect). So the multiplier is at most 2 (no confirmations
// waited for), the probe interval at most 500 ms, and 500 ms·2/log10(members)
// above 100 members (the suspicion timeout is log10(members) s up to 100
// members, 2 s beyond), the probe timeout at most half the probe interval
// and the gossip interval at most 100 ms. Timings already faster are kept.
// A false death costs a refutation, not the job: the coordinator takes a
// gossip death for a loss only when it is not refuted within GossipConfirm.
// Where more worker processes share a core, ScaleMembership slows the
// detector down instead and this leaves cfg as it is; so it does when the
// world is not known (0). Zero fields take memberlist's LAN timings first.
func WorldMembership(cfg MembershipConfig, world int, procsPerCore float64) MembershipConfig {
	cfg = withLANDefaults(cfg)
	if world < 1 || procsPerCore > 4 {
		return cfg
	}
	decades := math.Log10(float64(world + 1)) // the members: the workers and the coordinator
	probe := time.Duration(float64(worldProbeInterval) * min(1, 2/decades))
	cfg.ProbeInterval = min(cfg.ProbeInterval, probe)
	cfg.ProbeTimeout = min(cfg.ProbeTimeout, cfg.ProbeInterval/2)
	cfg.GossipInterval = min(cfg.GossipInterval, worldGossipInterval)
	cfg.SuspicionMult = min(cfg.SuspicionMult, 2)
	return cfg
}

// The slowest probe and gossip intervals WorldMembership allows.
const (
	worldProbeInterval  = 500 * time.Millisecond
	worldGossipInterval = 100 * time.Millisecond
)

// JobMembership is the gossip configuration of a member of a job of world
// workers with procsPerCore worker processes per core (0 = not known):
// WorldMembership, then ScaleMembership.
func JobMembership(cfg MembershipConfig, world int, procsPerCore float64) MembershipConfig {
	cfg = WorldMembership(cfg, world, procsPerCore)
	if procsPerCore > 0 {
		cfg = ScaleMembership(cfg, procsPerCore)
	}
	return cfg
}

// withLANDefaults fills cfg's zero timings with memberlist's LAN ones.
func withLANDefaults(cfg MembershipConfig) MembershipConfig {
	def := DefaultMembershipConfig()
	if cfg.ProbeInterval <= 0 {
		cfg.ProbeInterval = def.ProbeInterval
	}
	if cfg.ProbeTimeout <= 0 {
		cfg.ProbeTimeout = def.ProbeTimeout
	}
	if cfg.SuspicionMult <= 0 {
		cfg.SuspicionMult = def.SuspicionMult
	}
	if cfg.GossipInterval <= 0 {
		cfg.GossipInterval = def.GossipInterval
	}
	return cfg
}

// LivenessBound is how long a live worker process may take to answer
// something only the process itself can answer (a gRPC ping, a gossip
// probe, the refutation of a gossip death) in a job of world workers with
// procsPerCore worker processes per core on the busiest host (0 = not
// known, taken as 1):
//
//	3 s · max(1, procsPerCore/4) + 0.5 s · log2(world), at most 60 s
//
// 3.5 s for 2 workers on their own cores; 27 s for 64 workers on 2 cores
// (32 per core), where a starved process was measured to miss a 500 ms
// gossip probe and to refute its gossip death up to 1.3 s late; 60 s for 128
// workers on 2 cores. Measured in docs/decisions.md
// (#local-simulation-at-64-and-128-workers).
func LivenessBound(world int, procsPerCore float64) time.Duration {
	load := max(1, procsPerCore/4)
	d := 3*float64(time.Second)*load + 0.5*float64(time.Second)*math.Log2(float64(max(world, 1)))
	return min(time.Duration(d), 60*time.Second)
}

// keepAliveListener sets the control-plane keepalive on every accepted
// connection.
type keepAliveListener struct{ net.Listener }

func (l keepAliveListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetKeepAliveConfig(controlKeepAlive)
		if rc, err := tc.SyscallConn(); err == nil {
			_ = setUserTimeout(rc, controlUserTimeout)
		}
	}
	return c, nil
}

// dialControl dials a control-plane connection with the kernel keepalive.
func dialControl(ctx context.Context, addr string) (net.Conn, error) {
	d := net.Dialer{KeepAliveConfig: controlKeepAlive}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		if rc, err := tc.SyscallConn(); err == nil {
			_ = setUserTimeout(rc, controlUserTimeout)
		}
	}
	return c, nil
}
