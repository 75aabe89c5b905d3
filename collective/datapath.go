package collective

import "fmt"

// Training's data path (docs/collectives.md#one-data-path): how cluster's
// data plane moves bytes, and what `bench collectives` runs by default,
// so that what the benchmark reports is what training gets. Pairs of
// ranks on one host use shared-memory rings (DefaultShmRing); pairs on
// different hosts use TCP with these settings.
const (
	// TrainingEngine: the TCP pairs use the progress engine
	// (TCPConfig.ProgressEngine) rather than reader goroutines.
	TrainingEngine = false
)

// TrainingDataPath describes training's data path in words.
func TrainingDataPath() string {
	tcp := "reader goroutines"
	if TrainingEngine {
		tcp = "progress engine"
	}
	return fmt.Sprintf("shared-memory rings (up to %d KiB) within a host, TCP (%s, congestion control %s) between hosts",
		DefaultShmRing>>10, tcp, DefaultCongestion)
}
