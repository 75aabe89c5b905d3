package cluster

import "github.com/moetrain/moetrain/train"

// tinyJob is a model small enough that a step takes milliseconds.
func tinyJob() train.JobConfig {
	cfg := train.DefaultJobConfig()
	cfg.Model.DModel, cfg.Model.Layers, cfg.Model.Heads, cfg.Model.SeqLen = 16, 2, 2, 16
	cfg.Model.Experts, cfg.Model.ExpertHidden = 4, 32
	cfg.Data.SeqLen, cfg.Data.BatchSize = 16, 2
	cfg.Train.Steps = 3
	return cfg
}
