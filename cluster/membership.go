package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/rs/zerolog"
)

// MembershipConfig tunes the gossip failure detector. Defaults are
// memberlist's LAN profile: a dead or cut-off node is declared dead after
// roughly ProbeInterval + SuspicionMult·max(1, log10 n)·ProbeInterval
// (about 5 s for a handful of nodes).
type MembershipConfig struct {
	// BindAddr is the IP to gossip on; "" = the IP of the control-plane address.
	BindAddr string
	// BindPort is the gossip port (TCP and UDP); 0 picks a free one.
	BindPort int
	// AdvertiseAddr is the IP other members reach this one at; "" = BindAddr,
	// or when that is 0.0.0.0, the first private (else any non-loopback) IP.
	AdvertiseAddr string
	// ProbeInterval is how often each node probes a random peer. LAN: 1 s.
	ProbeInterval time.Duration
	// ProbeTimeout is how long to wait for a probe's ack. LAN: 500 ms.
	ProbeTimeout time.Duration
	// SuspicionMult scales how long a suspect has to refute before it is
	// declared dead. LAN: 4.
	SuspicionMult int
	// GossipInterval is how often gossip is sent. LAN: 200 ms.
	GossipInterval time.Duration
}

// DefaultMembershipConfig returns memberlist's LAN timings.
func DefaultMembershipConfig() MembershipConfig {
	lan := memberlist.DefaultLANConfig()
	return MembershipConfig{ProbeInterval: lan.ProbeInterval, ProbeTimeout: lan.ProbeTimeout,
		SuspicionMult: lan.SuspicionMult, GossipInterval: lan.GossipInterval}
}

// Membership is one node of the job's gossip cluster.
type Membership struct {
	ml     *memberlist.Memberlist
	events *memberEvents
	once   sync.Once
}

// MemberWatch receives what gossip learns about the other members, in the
// order it learns it, on one goroutine of the member's own (a callback may
// block; later events wait for it).
type MemberWatch struct {
	// Dead: the failure detector declared the node dead (it stopped
	// answering probes and did not refute the suspicion in time). A node
	// that is alive after all refutes the death and is reported by Alive.
	Dead func(name string)
	// Left: the node left the cluster on its own (it is shutting down).
	Left func(name string)
	// Alive: the node joined, or came back after being declared dead.
	Alive func(name string)
}

// memberEvent is one queued membership change.
type memberEvent struct {
	name string
	kind byte // 'd' dead, 'l' left, 'a' alive
}

// memberEvents queues memberlist's notifications and hands them to a
// MemberWatch in order from one goroutine, without blocking memberlist (its
// delegates run under its locks).
type memberEvents struct {
	self  string
	watch MemberWatch
	log   zerolog.Logger

	mu    sync.Mutex
	queue []memberEvent
	wake  chan struct{} // capacity 1
	done  chan struct{} // closed by Membership.Close
}

func newMemberEvents(self string, w MemberWatch, lg zerolog.Logger) *memberEvents {
	e := &memberEvents{self: self, watch: w, log: lg, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go e.run()
	return e
}

func (e *memberEvents) push(ev memberEvent) {
	e.mu.Lock()
	e.queue = append(e.queue, ev)
	e.mu.Unlock()
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

func (e *memberEvents) run() {
	for {
		select {
		case <-e.wake:
		case <-e.done:
			return
		}
		e.mu.Lock()
		q := e.queue
		e.queue = nil
		e.mu.Unlock()
		for _, ev := range q {
			var f func(string)
			switch ev.kind {
			case 'd':
				f = e.watch.Dead
			case 'l':
				f = e.watch.Left
			case 'a':
				f = e.watch.Alive
			}
			if f != nil {
				f(ev.name)
			}
		}
	}
}

func (e *memberEvents) NotifyJoin(n *memberlist.Node) {
	if n.Name == e.self {
		return
	}
	e.log.Debug().Str("node", n.Name).Str("addr", n.Address()).Str("meta", string(n.Meta)).Msg("gossip: node joined")
	e.push(memberEvent{n.Name, 'a'})
}

func (e *memberEvents) NotifyLeave(n *memberlist.Node) {
	if n.Name == e.self {
		return
	}
	if n.State == memberlist.StateLeft {
		e.log.Debug().Str("node", n.Name).Msg("gossip: node left")
		e.push(memberEvent{n.Name, 'l'})
		return
	}
	e.log.Debug().Str("node", n.Name).Msg("gossip: node declared dead")
	e.push(memberEvent{n.Name, 'd'})
}

func (e *memberEvents) NotifyUpdate(*memberlist.Node) {}

// metaDelegate publishes this node's metadata (JSON, ≤ 512 bytes).
type metaDelegate struct{ meta []byte }

func (d *metaDelegate) NodeMeta(limit int) []byte {
	if len(d.meta) > limit {
		return d.meta[:limit]
	}
	return d.meta
}
func (d *metaDelegate) NotifyMsg([]byte)                           {}
func (d *metaDelegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *metaDelegate) LocalState(join bool) []byte                { return nil }
func (d *metaDelegate) MergeRemoteState(buf []byte, join bool)     {}

// StartMembership creates this node's gossip member, named name, with the
// given metadata. onLeave is called (on the member's event goroutine) when
// another node leaves or is declared dead.
func StartMembership(name string, meta []byte, token string, cfg MembershipConfig, lg zerolog.Logger,
	onLeave func(name string)) (*Membership, error) {
	return StartMembershipWatch(name, meta, token, cfg, lg, MemberWatch{Dead: onLeave, Left: onLeave})
}

// StartMembershipWatch is StartMembership that tells deaths, departures
// and returns apart (see MemberWatch).
func StartMembershipWatch(name string, meta []byte, token string, cfg MembershipConfig, lg zerolog.Logger,
	w MemberWatch) (*Membership, error) {
	c := memberlist.DefaultLANConfig()
	c.Name = name
	c.BindAddr = cfg.BindAddr
	if c.BindAddr == "" {
		c.BindAddr = "127.0.0.1"
	}
	c.BindPort = cfg.BindPort
	c.AdvertisePort = cfg.BindPort // 0: memberlist sets it to the port it picks
	c.AdvertiseAddr = cfg.AdvertiseAddr
	if c.AdvertiseAddr == "" && net.ParseIP(c.BindAddr).IsUnspecified() {
		c.AdvertiseAddr = hostIP()
	}
	if cfg.ProbeInterval > 0 {
		c.ProbeInterval = cfg.ProbeInterval
	}
	if cfg.ProbeTimeout > 0 {
		c.ProbeTimeout = cfg.ProbeTimeout
	}
	if cfg.SuspicionMult > 0 {
		c.SuspicionMult = cfg.SuspicionMult
	}
	if cfg.GossipInterval > 0 {
		c.GossipInterval = cfg.GossipInterval
	}
	c.SecretKey = GossipKey(token)
	// No LZW compression of gossip packets: memberlist builds a fresh
	// compressor (and its table) per packet, which made up most of the
	// gossip's CPU while a large job joined
	// (docs/planner.md#control-plane-scale); the bandwidth it saves is a few
	// KB/s per member. Members that compress are still understood.
	c.EnableCompression = false
	c.Delegate = &metaDelegate{meta: meta}
	events := newMemberEvents(name, w, lg)
	c.Events = events
	out := &zerologWriter{log: lg.With().Str("component", "memberlist").Logger()}
	c.Logger = log.New(out, "", 0)
	ml, err := memberlist.Create(c)
	if err != nil {
		close(events.done)
		return nil, fmt.Errorf("gossip: start member %s on %s:%d: %w", name, c.BindAddr, cfg.BindPort, err)
	}
	return &Membership{ml: ml, events: events}, nil
}

// Addr is this member's gossip address, host:port.
func (m *Membership) Addr() string {
	n := m.ml.LocalNode()
	return net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
}

// Join contacts an existing member at addr (host:port).
func (m *Membership) Join(addr string) error {
	if _, err := m.ml.Join([]string{addr}); err != nil {
		return fmt.Errorf("gossip: join %s: %w", addr, err)
	}
	return nil
}

// JoinAny contacts the members at addrs (host:port) one at a time, in
// order, until one answers: one push-pull of the member list is all a
// joiner needs, and asking another member than the coordinator spreads the
// joins of a large job over the cluster. The error names every address
// tried.
func (m *Membership) JoinAny(addrs []string) error {
	if len(addrs) == 0 {
		return errors.New("gossip: join: no member address to contact")
	}
	var errs []error
	for _, a := range addrs {
		err := m.Join(a)
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// RandomPeers returns the gossip addresses (host:port) of up to k members
// other than this one, chosen at random among those this member takes for
// alive.
func (m *Membership) RandomPeers(k int) []string {
	self := m.ml.LocalNode().Name
	var out []string
	seen := 0
	for _, n := range m.ml.Members() {
		if n.Name == self || n.State != memberlist.StateAlive {
			continue
		}
		// Reservoir sampling: each member kept with probability k/seen.
		seen++
		a := net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
		if len(out) < k {
			out = append(out, a)
		} else if j := rand.IntN(seen); j < k {
			out[j] = a
		}
	}
	return out
}

// AliveMembers counts the members this one has not seen die or leave,
// itself included.
func (m *Membership) AliveMembers() int { return m.ml.NumMembers() }

// Close leaves the cluster gracefully (bounded by timeout) and shuts down.
func (m *Membership) Close(timeout time.Duration) {
	_ = m.ml.Leave(timeout)
	_ = m.ml.Shutdown()
	m.once.Do(func() { close(m.events.done) })
}

// zerologWriter turns memberlist's "[LEVEL] memberlist: msg" lines into
// zerolog debug events with memberlist's level as a field: they land in the
// JSON log files, not on the console. Its complaints are not actionable by
// themselves (a cut-off node logs one per gossip round); the coordinator logs
// what it concludes from them (which worker died, the abort).
type zerologWriter struct{ log zerolog.Logger }

func (w *zerologWriter) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimRight(p, "\n"), []byte("\n")) {
		lvl := "DEBUG"
		if i := bytes.IndexByte(line, ']'); i >= 0 && bytes.HasPrefix(line, []byte("[")) {
			lvl = string(line[1:i])
			line = bytes.TrimSpace(line[i+1:])
		}
		line = bytes.TrimPrefix(line, []byte("memberlist: "))
		w.log.Debug().Str("memberlist_level", lvl).Msg(string(line))
	}
	return len(p), nil
}

var _ io.Writer = (*zerologWriter)(nil)

// hostIP is the first private IPv4 address of an up interface, else the first
// non-loopback one, else 127.0.0.1.
func hostIP() string {
	addrs, _ := net.InterfaceAddrs()
	var any string
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.To4() == nil || ipn.IP.IsLoopback() {
			continue
		}
		if ipn.IP.IsPrivate() {
			return ipn.IP.String()
		}
		if any == "" {
			any = ipn.IP.String()
		}
	}
	if any == "" {
		any = "127.0.0.1"
	}
	return any
}
