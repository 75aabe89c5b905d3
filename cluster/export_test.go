package cluster

// What the external tests (package cluster_test, which may import
// cluster/worker) need of the coordinator's internals.

// GossipDead is what gossip reports of a worker it takes for dead.
func (c *Coordinator) GossipDead(name string) { c.gossipDead(name) }

// GossipAlive is what gossip reports of a worker that refuted its death.
func (c *Coordinator) GossipAlive(name string) { c.gossipAlive(name) }
