package worker

// Rank-side checkpointing, shared by every runner.
//
// A runner hands its state to the rank checkpointer through a small
// interface and calls three functions:
//
//	rc, resumed, err := openRankCheckpoints(ctx, spec, state) // restores when spec says resume
//	for ... { step ...; if err := rc.afterStep(ctx, step); err != nil { return err } }
//	if err := rc.finish(ctx); err != nil { return err }       // the last shard is written and reported
//
// state implements rankState: Snapshot copies the rank's state (the only
// part of a save the training step waits for); Restore loads a committed
// checkpoint by global tensor name and region (checkpoint.ReadRegion), never
// assuming the layout that saved it, so a checkpoint saved under one mesh
// loads under another. train.MeshRankState is the implementation for every
// mesh: what a rank's checkpoint holds is train's; when and where it is
// written and reported is this file's.
//
// Commit protocol (docs/checkpoint-format.md#commit-protocol): after every
// spec.Checkpoint.Every steps and after the last, the rank snapshots its
// state and an AsyncWriter writes its shard into DIR/step-N.tmp in the
// background while training continues (a new save first waits for the
// previous one). When the shard is on disk the rank reports it
// (spec.ReportShard: file, size, checksum, pieces) to the coordinator, which
// publishes the step once every rank of the plan has reported it. A rank
// never writes the manifest, LATEST or anything outside its own shard file.
//
// Test hook: MOETRAIN_TEST_CHECKPOINT_PAUSE=STEP:RANK:FILE makes rank RANK,
// while writing its shard of step STEP, write "PID SHARD-PATH" to FILE and
// then hold the write
// (for up to two minutes, or until the job is cancelled), so a test can
// SIGKILL a process at that exact point.

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/moetrain/moetrain/checkpoint"
	"github.com/moetrain/moetrain/cluster"
)

// PauseEnv names the checkpoint test hook (see the file comment).
const PauseEnv = "MOETRAIN_TEST_CHECKPOINT_PAUSE"

// pauseLimit bounds how long the test hook holds a write.
const pauseLimit = 2 * time.Minute

// finishTimeout bounds the wait for the last shard at the end of a run.
const finishTimeout = 10 * time.Minute

// rankState is a runner's state as the rank checkpointer sees it.
type rankState interface {
	// Snapshot copies this rank's state after its last completed step into
	// a snapshot (step = steps completed). The runner may step again as
	// soon as it returns.
	Snapshot(rank int) (*checkpoint.Snapshot, error)
	// Restore loads the parts of c this rank holds (by global tensor name
	// and region, whatever layout wrote them), its step, schedule, sampler
	// and routing state. After a failure the state is undefined: the runner
	// fails.
	Restore(c *checkpoint.Checkpoint, rank int) error
}

// rankCheckpoints saves one rank's shards and reports them.
type rankCheckpoints struct {
	cs     cluster.CheckpointSpec
	rank   int
	last   int // the job's final step: always saved
	state  rankState
	log    zerolog.Logger
	report func(step int, info checkpoint.ShardInfo, werr error) error
	aw     *checkpoint.AsyncWriter

	reportErr chan error  // a report that could not be delivered (buffer 1)
	closing   atomic.Bool // close cancelled the save in flight: its failure is not the disk's
}

// openRankCheckpoints restores state from spec.Checkpoint.ResumeDir (if set;
// resumed says so) and prepares asynchronous saves into spec.Checkpoint.Dir
// (if set). The returned value is never nil; its methods do nothing when
// the job has no checkpoint directory.
func openRankCheckpoints(ctx context.Context, spec StartSpec, state rankState) (rc *rankCheckpoints, resumed bool, err error) {
	cs := spec.Checkpoint
	rc = &rankCheckpoints{cs: cs, rank: spec.Rank, last: spec.Job.Train.Steps, state: state, log: spec.Log,
		report: spec.ReportShard, reportErr: make(chan error, 1)}
	if cs.Every < 0 {
		return rc, false, fmt.Errorf("checkpoint every %d steps: must be >= 0", cs.Every)
	}
	if cs.ResumeDir != "" {
		start := time.Now()
		// The coordinator verified every checksum when it chose the
		// checkpoint; every read here checks the chunks it touches again.
		c, err := checkpoint.OpenDir(cs.ResumeDir, checkpoint.OpenOptions{})
		if err != nil {
			return rc, false, fmt.Errorf("rank %d: resume: %w", spec.Rank, err)
		}
		defer c.Close()
		if c.Step() != cs.ResumeStep {
			return rc, false, fmt.Errorf("rank %d: resume: %s holds step %d, the coordinator chose step %d", spec.Rank, cs.ResumeDir, c.Step(), cs.ResumeStep)
		}
		if err := state.Restore(c, spec.Rank); err != nil {
			return rc, false, fmt.Errorf("rank %d: resume from %s: %w", spec.Rank, cs.ResumeDir, err)
		}
		spec.Log.Info().Str("dir", cs.ResumeDir).Int64("resumed_step", c.Step()).
			Dur("took", time.Since(start)).Msg("resumed from checkpoint")
		resumed = true
	}
	if cs.Dir == "" {
		return rc, resumed, nil
	}
	if rc.report == nil {
		return rc, resumed, fmt.Errorf("rank %d: checkpoints need a way to report shards to the coordinator", spec.Rank)
	}
	store, err := checkpoint.NewStore(cs.Dir, 0) // the coordinator prunes
	if err != nil {
		return rc, resumed, fmt.Errorf("rank %d: %w", spec.Rank, err)
	}
	opts := checkpoint.WriterOptions{}
	if hook, err := pauseHook(ctx, spec.Rank, spec.Log); err != nil {
		return rc, resumed, err
	} else if hook != nil {
		opts.BeforeClose = hook
	}
	rc.aw = checkpoint.NewAsyncWriter(store, opts)
	return rc, resumed, nil
}

// due reports whether step is a checkpoint step.
func (rc *rankCheckpoints) due(step int) bool {
	return step == rc.last || rc.cs.Every > 0 && step%rc.cs.Every == 0
}

// afterStep starts the asynchronous save of step when one is due. It waits
// for the previous save first and returns its failure, or a report that
// could not be delivered.
func (rc *rankCheckpoints) afterStep(ctx context.Context, step int) error {
	if rc.aw == nil || !rc.due(step) {
		return nil
	}
	// The training loop waits for all of this: logged as the checkpoint's
	// stall (scripts/bench-checkpoint-overhead.sh sums it).
	start := time.Now()
	// The previous write, still running, is bounded here: one stuck for
	// finishTimeout fails the job. Its failure is returned once. Waiting
	// before taking the new snapshot keeps one copy of the state alive, not
	// two (the training loop waits here either way); checking the report
	// after the wait catches the previous save's report, not only older ones.
	wctx, cancel := context.WithTimeout(ctx, finishTimeout)
	_, err := rc.aw.Wait(wctx)
	cancel()
	if err != nil {
		return fmt.Errorf("rank %d: %w", rc.rank, err)
	}
	select {
	case err := <-rc.reportErr:
		return err
	default:
	}
	snap, err := rc.state.Snapshot(rc.rank)
	if err != nil {
		return fmt.Errorf("checkpoint step %d: %w", step, err)
	}
	if snap.Step != int64(step) {
		return fmt.Errorf("checkpoint step %d: the runner's snapshot is of step %d", step, snap.Step)
	}
	// The write runs under ctx: an abort or stop cancels it.
	err = rc.aw.Save(ctx, snap, func(info checkpoint.ShardInfo, werr error) {
		if ctx.Err() != nil || rc.closing.Load() {
			return // the job was aborted or stopped, or the runner is ending: nothing to report
		}
		if rerr := rc.report(step, info, werr); rerr != nil {
			select {
			case rc.reportErr <- fmt.Errorf("checkpoint step %d: report shard to the coordinator: %w", step, rerr):
			default:
			}
		}
	})
	if err != nil {
		return fmt.Errorf("rank %d: %w", rc.rank, err)
	}
	rc.log.Info().Int("step", step).Dur("stall", time.Since(start)).Msg("checkpoint snapshot")
	return nil
}

// finish waits (bounded) until the last save is written and reported.
func (rc *rankCheckpoints) finish(ctx context.Context) error {
	if rc.aw == nil {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, finishTimeout)
	defer cancel()
	if _, err := rc.aw.Wait(wctx); err != nil {
		return fmt.Errorf("rank %d: last checkpoint: %w", rc.rank, err)
	}
	select {
	case err := <-rc.reportErr:
		return err
	default:
	}
	return nil
}

// closeTimeout bounds close's wait for a cancelled write.
const closeTimeout = 15 * time.Second

// close cancels the save in flight, if any, and waits (bounded) until it
// has stopped, so that a rank started again in this process never races an
// old write of the same shard file.
func (rc *rankCheckpoints) close() {
	if rc.aw == nil {
		return
	}
	rc.closing.Store(true) // before the cancel: the cancelled save must not be reported as a failed write
	rc.aw.Cancel()
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	_, _ = rc.aw.Wait(ctx) // its error (cancelled) is no news: the runner is ending
}

// pauseHook returns the test hook's BeforeClose for this rank (nil when the
// variable is unset or names another rank).
func pauseHook(ctx context.Context, rank int, log zerolog.Logger) (func(string), error) {
	v := os.Getenv(PauseEnv)
	if v == "" {
		return nil, nil
	}
	parts := strings.SplitN(v, ":", 3)
	if len(parts) != 3 {
		return nil, fmt.Errorf("%s=%q: want STEP:RANK:FILE", PauseEnv, v)
	}
	step, err1 := strconv.ParseInt(parts[0], 10, 64)
	r, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil || step < 0 || r < 0 || parts[2] == "" {
		return nil, fmt.Errorf("%s=%q: want STEP:RANK:FILE with a step and rank >= 0", PauseEnv, v)
	}
	if r != rank {
		return nil, nil
	}
	dir := checkpoint.StepName(step) + ".tmp"
	marker := parts[2]
	return func(path string) {
		if !strings.Contains(path, dir) {
			return
		}
		log.Warn().Int64("pause_step", step).Str("shard", path).Msg("test hook: holding the shard write")
		// Written whole, then renamed: a test polling for FILE never reads
		// half of it.
		err := os.WriteFile(marker+".part", fmt.Appendf(nil, "%d %s\n", os.Getpid(), path), 0o644)
		if err == nil {
			err = os.Rename(marker+".part", marker)
		}
		if err != nil {
			log.Error().Err(err).Msg("test hook: cannot write the marker file")
		}
		select {
		case <-time.After(pauseLimit):
		case <-ctx.Done():
		}
	}, nil
}
