package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/checkpoint"
	"github.com/moetrain/moetrain/train"
)

// CheckpointConfig is a job's checkpointing, set by the flags of `coordinator
// launch` and `serve` (--checkpoint-dir, --checkpoint-every,
// --checkpoint-keep, --resume). The directory must be reachable under the
// same path by the coordinator and every worker (local runs: the same file
// system; multi-host: a shared mount): ranks write their shards into it, the
// coordinator publishes and prunes.
type CheckpointConfig struct {
	// Dir is the checkpoint directory; "" = no checkpoints are written.
	Dir string
	// Every saves after every Every steps and after the last; 0 = after the
	// last only.
	Every int
	// Keep is how many committed checkpoints to keep (the newest); 0 = all.
	Keep int
	// Resume, if set, restores every rank before the first step: "latest"
	// (the newest intact checkpoint of Dir, falling back past damaged ones
	// and saying so), a step number of Dir, or a path (a step directory, or
	// a checkpoint directory, optionally DIR:latest / DIR:STEP).
	Resume string
}

// Validate checks the fields; errors name the flag.
func (c CheckpointConfig) Validate() error {
	switch {
	case c.Every < 0:
		return fmt.Errorf("--checkpoint-every %d: must be >= 0 (0 = only after the last step)", c.Every)
	case c.Keep < 0:
		return fmt.Errorf("--checkpoint-keep %d: must be >= 0 (0 = keep all)", c.Keep)
	case c.Dir == "" && (c.Every > 0 || c.Keep > 0):
		return fmt.Errorf("--checkpoint-every/--checkpoint-keep need --checkpoint-dir")
	case c.Dir == "" && (c.Resume == "latest" || isStepRef(c.Resume)):
		return fmt.Errorf("--resume %s needs --checkpoint-dir (or give a checkpoint path)", c.Resume)
	}
	return nil
}

func isStepRef(s string) bool {
	n, err := strconv.ParseInt(s, 10, 64)
	return err == nil && n >= 0
}

// coordCheckpoints is the coordinator's side of checkpointing: the store it
// publishes into, and the checkpoint every rank resumes from.
type coordCheckpoints struct {
	cfg        CheckpointConfig
	store      *checkpoint.Store // nil without Dir
	resumeDir  string            // "" = fresh start
	resumeStep int64
}

// openCoordCheckpoints opens the checkpoint directory, removes what an
// interrupted run left (temporary step directories), and resolves --resume
// to one committed step directory, verifying every checksum; a fallback
// past damaged checkpoints is logged. Paths become absolute, as workers may
// run elsewhere.
func openCoordCheckpoints(cfg CheckpointConfig, log zerolog.Logger) (*coordCheckpoints, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cc := &coordCheckpoints{cfg: cfg}
	if cfg.Dir != "" {
		abs, err := filepath.Abs(cfg.Dir)
		if err != nil {
			return nil, fmt.Errorf("--checkpoint-dir %s: %w", cfg.Dir, err)
		}
		cc.cfg.Dir = abs
		if cc.store, err = checkpoint.NewStore(abs, cfg.Keep); err != nil {
			return nil, err
		}
		removed, err := cc.store.Cleanup()
		if err != nil {
			return nil, fmt.Errorf("checkpoint dir %s: cleanup: %w", abs, err)
		}
		if len(removed) > 0 {
			log.Warn().Strs("removed", removed).Msg("removed incomplete checkpoints of an interrupted run")
		}
	}
	if cfg.Resume == "" {
		if cc.store != nil {
			if steps, err := cc.store.Steps(); err != nil {
				return nil, err
			} else if len(steps) > 0 {
				return nil, fmt.Errorf("--checkpoint-dir %s already holds checkpoints (steps %v) that a fresh run would collide with: "+
					"pass --resume latest to continue from them, or choose another directory", cc.cfg.Dir, steps)
			}
		}
		return cc, nil
	}
	start := time.Now()
	c, rep, err := train.OpenRef(cc.store, cfg.Resume)
	if err != nil {
		return nil, fmt.Errorf("--resume %s: %w", cfg.Resume, err)
	}
	defer c.Close()
	dir, err := filepath.Abs(c.Dir)
	if err != nil {
		return nil, fmt.Errorf("--resume %s: %w", cfg.Resume, err)
	}
	cc.resumeDir, cc.resumeStep = dir, c.Step()
	if rep != nil && len(rep.Skipped) > 0 {
		log.Warn().Str("resume_from", dir).Int64("step", c.Step()).Str("report", rep.String()).
			Msg("newest checkpoint is damaged: resuming from the newest intact one")
	}
	if err := cc.setAsideNewer(c.Step(), rep, log); err != nil {
		return nil, fmt.Errorf("--resume %s: %w", cfg.Resume, err)
	}
	log.Info().Str("dir", dir).Int64("step", c.Step()).Dur("verified_in", time.Since(start)).
		Msg("every rank resumes from this checkpoint")
	return cc, nil
}

// spec is what the start command tells every rank.
func (cc *coordCheckpoints) spec() CheckpointSpec {
	return CheckpointSpec{Dir: cc.cfg.Dir, Every: cc.cfg.Every, ResumeDir: cc.resumeDir, ResumeStep: cc.resumeStep}
}

// commit writes the manifest of step (the ranks' shards, the job config
// and the mesh) and publishes it atomically, with LATEST, then prunes.
func (cc *coordCheckpoints) commit(x CommitCheckpoint, plan *Plan, jobJSON []byte, jobID string) error {
	if cc.store == nil {
		return fmt.Errorf("no checkpoint directory")
	}
	m := checkpoint.NewManifest(int64(x.Step), x.Shards)
	m.Config = jobJSON
	if plan != nil {
		pm := plan.Mesh
		m.Mesh = map[string]int{"dp": pm.DP, "sp": pm.SP, "tp": pm.TP, "ep": pm.EP}
	}
	m.Meta = map[string]string{"created": time.Now().UTC().Format(time.RFC3339), "job": jobID}
	return cc.store.Commit(m)
}

// damagedSuffix marks a committed step directory set aside because it
// failed verification; readers and Cleanup ignore it, so it stays for
// inspection.
const damagedSuffix = ".damaged"

// setAsideNewer clears the way for a run resumed at step: the resumed run
// will write the steps after it again. Newer checkpoints that "latest"
// skipped as damaged are renamed to step-N.damaged (logged); a newer intact
// one is an error, as the run would overwrite it.
func (cc *coordCheckpoints) setAsideNewer(step int64, rep *checkpoint.OpenReport, log zerolog.Logger) error {
	if cc.store == nil {
		return nil
	}
	steps, err := cc.store.Steps()
	if err != nil {
		return err
	}
	damaged := map[int64]bool{}
	if rep != nil {
		for _, sk := range rep.Skipped {
			damaged[sk.Step] = true
		}
	}
	var newer []int64
	for _, s := range steps {
		if s > step && !damaged[s] {
			newer = append(newer, s)
		}
	}
	if len(newer) > 0 {
		return fmt.Errorf("--checkpoint-dir %s holds checkpoints newer than step %d (steps %v) that the resumed run would overwrite: "+
			"remove them, resume from the newest, or choose another --checkpoint-dir", cc.cfg.Dir, step, newer)
	}
	for _, s := range steps {
		if s <= step || !damaged[s] {
			continue
		}
		from := cc.store.StepDir(s)
		if err := os.Rename(from, from+damagedSuffix); err != nil {
			return fmt.Errorf("set aside damaged checkpoint: %w", err)
		}
		log.Warn().Str("dir", from+damagedSuffix).Msg("damaged checkpoint set aside (kept for inspection; delete it when done)")
	}
	return nil
}

// CheckpointSpec is what a rank is told about checkpoints in its start
// command (the coordinator resolves --resume before any rank starts).
type CheckpointSpec struct {
	// Dir is the checkpoint directory shared by every rank; "" = no saves.
	Dir string
	// Every saves after every Every steps and after the last; 0 = after the
	// last only.
	Every int
	// ResumeDir is the committed step directory to restore before the first
	// step; "" = a fresh start. ResumeStep is its step.
	ResumeDir  string
	ResumeStep int64
}
