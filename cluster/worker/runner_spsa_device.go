package worker

import (
	"fmt"

	"github.com/moetrain/moetrain/cuda"
	"github.com/moetrain/moetrain/gpu"
	"github.com/moetrain/moetrain/model"
	"github.com/moetrain/moetrain/spsa"
	"github.com/moetrain/moetrain/train"
)

// spsaReplica is where an SPSA rank keeps its parameters and evaluates its
// loss: the host model itself, or (train.device = "cuda") a copy of it on a
// GPU. The directions and updates are the same bits on both
// (docs/algorithms/spsa.md#devices), so a job may mix them.
type spsaReplica struct {
	Store spsa.Store
	Model spsa.Forwarder
	// Device names the GPU ("" on the host).
	Device string
	close  func()
}

// Close releases the GPU's memory and context (nothing on the host).
func (r *spsaReplica) Close() {
	if r.close != nil {
		r.close()
	}
}

// newSPSAReplica puts m (the starting parameters, loaded) where job's
// train.device says. On the GPU, the rank that is local-th among its host's
// ranks (hosts as the plan assigns them) takes GPU (train.gpu + local) mod
// the host's GPU count, so ranks of one host spread over its GPUs.
func newSPSAReplica(job train.JobConfig, m *model.Model, hosts []string, rank, threads int) (*spsaReplica, error) {
	if job.Train.Device != train.DeviceCUDA {
		s, err := spsa.NewHostStore(m.Params, m.Grads, threads)
		if err != nil {
			return nil, err
		}
		return &spsaReplica{Store: s, Model: m}, nil
	}
	count, err := cuda.DeviceCount()
	if err != nil {
		return nil, fmt.Errorf("train.device = \"cuda\": %w", err)
	}
	if count < 1 {
		return nil, fmt.Errorf("train.device = \"cuda\": no GPU on this host")
	}
	local := 0
	for r := 0; r < rank && r < len(hosts); r++ {
		if hosts[r] == hosts[rank] {
			local++
		}
	}
	ordinal := (job.Train.GPU + local) % count
	dev, err := gpu.Open(ordinal)
	if err != nil {
		return nil, fmt.Errorf("train.device = \"cuda\": GPU %d: %w", ordinal, err)
	}
	g, err := gpu.NewFromHost(dev, m)
	if err != nil {
		dev.Close()
		return nil, err
	}
	if err := g.SetPrecision(job.Train.Precision == train.PrecisionBF16); err != nil {
		g.Close()
		dev.Close()
		return nil, err
	}
	s := g.NewSPSAStore()
	return &spsaReplica{Store: s, Model: g, Device: dev.String(), close: func() {
		s.Close()
		g.Close()
		dev.Close()
	}}, nil
}
