package stepmodel

import (
	"bytes"
	"fmt"

	"github.com/BurntSushi/toml"

	"github.com/moetrain/moetrain/internal/atomicfile"
	"github.com/moetrain/moetrain/parallel"
	"github.com/moetrain/moetrain/train"
)

// WriteJob writes job with its [mesh] set to m (every other setting kept)
// as TOML, atomically: a temporary file in the same directory, synced, then
// renamed over path. The file loads back with train.LoadJobConfig.
func WriteJob(path string, job train.JobConfig, m parallel.Mesh) error {
	job.Mesh.DP, job.Mesh.SP, job.Mesh.TP, job.Mesh.EP = m.DP, m.SP, m.TP, m.EP
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(job); err != nil {
		return fmt.Errorf("stepmodel: encode job: %w", err)
	}
	if err := atomicfile.Write(path, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("stepmodel: %w", err)
	}
	return nil
}
