package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Directory layout of a Store:
//
//	DIR/LATEST                 "step-000200\n": the last committed step (a hint; see Open)
//	DIR/step-000200/           a committed checkpoint: manifest.json + shard-NNNNN.mtck
//	DIR/step-000300.tmp/       a checkpoint being written (ignored by readers)
//	DIR/step-000100.trash/     a pruned checkpoint being deleted (ignored by readers)
//
// Publication is the rename of step-N.tmp to step-N, done only after every
// shard and the manifest inside are fsynced; so a crash at any moment leaves
// every committed checkpoint intact and at most one .tmp directory behind.

const (
	latestFile  = "LATEST"
	tmpSuffix   = ".tmp"
	trashSuffix = ".trash"
)

// Store is a directory of checkpoints. Its methods may be called from several
// processes for different steps; Commit, Prune and Cleanup of one store must
// come from one process (the coordinator).
type Store struct {
	dir string
	// Keep is how many committed checkpoints Commit keeps (the newest); 0
	// keeps all.
	Keep int
	// NoSync skips fsyncs (tests of logic only).
	NoSync bool
	// crashHook, when set (tests), is called at each named point of Commit
	// and stops it with the returned error, simulating a crash there.
	crashHook func(point string) error
}

// NewStore opens (creating if needed) the checkpoint directory dir.
func NewStore(dir string, keep int) (*Store, error) {
	if keep < 0 {
		return nil, fmt.Errorf("checkpoint store %s: keep %d is negative", dir, keep)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("checkpoint store: %w", err)
	}
	return &Store{dir: dir, Keep: keep}, nil
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

// StepName is the directory name of step.
func StepName(step int64) string { return fmt.Sprintf("step-%06d", step) }

// ShardName is the file name of rank's shard.
func ShardName(rank int) string { return fmt.Sprintf("shard-%05d.mtck", rank) }

// parseStepName returns the step of a committed directory name.
func parseStepName(name string) (int64, bool) {
	rest, ok := strings.CutPrefix(name, "step-")
	if !ok || rest == "" {
		return 0, false
	}
	for _, r := range rest {
		if r < '0' || r > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(rest, 10, 64)
	return n, err == nil
}

// StepDir is the committed directory of step.
func (s *Store) StepDir(step int64) string { return filepath.Join(s.dir, StepName(step)) }

// TempDir is the directory shards of step are written to before Commit.
func (s *Store) TempDir(step int64) string { return s.StepDir(step) + tmpSuffix }

// Begin creates the temporary directory of step (idempotent: every rank may
// call it). It fails if step is already committed.
func (s *Store) Begin(step int64) (string, error) {
	if step < 0 {
		return "", fmt.Errorf("checkpoint step %d is negative", step)
	}
	if _, err := os.Stat(s.StepDir(step)); err == nil {
		return "", fmt.Errorf("checkpoint %s already committed", s.StepDir(step))
	}
	tmp := s.TempDir(step)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return "", fmt.Errorf("begin checkpoint: %w", err)
	}
	return tmp, nil
}

// CreateShard begins step and starts writing rank's shard in its temporary
// directory.
func (s *Store) CreateShard(ctx context.Context, step int64, rank int, opts WriterOptions) (*ShardWriter, error) {
	tmp, err := s.Begin(step)
	if err != nil {
		return nil, err
	}
	if s.NoSync {
		opts.NoSync = true
	}
	return CreateShard(ctx, filepath.Join(tmp, ShardName(rank)), rank, opts)
}

func (s *Store) hook(point string) error {
	if s.crashHook != nil {
		return s.crashHook(point)
	}
	return nil
}

// Commit publishes step m.Step once every rank's shard is in its temporary
// directory: it checks each shard's size and checksum against m, writes
// manifest.json (atomically), renames the directory into place, updates
// LATEST (atomically) and prunes to the newest Keep checkpoints.
func (s *Store) Commit(m *Manifest) error {
	b, err := EncodeManifest(m) // validates m before any file is touched
	if err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	tmp := s.TempDir(m.Step)
	for _, sh := range m.Shards {
		if err := checkShardFile(filepath.Join(tmp, sh.File), sh); err != nil {
			return fmt.Errorf("commit step %d: %w", m.Step, err)
		}
	}
	if err := removeUnlisted(tmp, m); err != nil {
		return fmt.Errorf("commit step %d: %w", m.Step, err)
	}
	if err := s.hook("before-manifest"); err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(tmp, ManifestFile), b, !s.NoSync); err != nil {
		return fmt.Errorf("commit step %d: %w", m.Step, err)
	}
	if err := s.hook("before-rename"); err != nil {
		return err
	}
	final := s.StepDir(m.Step)
	if err := os.Rename(tmp, final); err != nil {
		return fmt.Errorf("commit step %d: publish: %w", m.Step, err)
	}
	if !s.NoSync {
		if err := syncDir(s.dir); err != nil {
			return fmt.Errorf("commit step %d: %w", m.Step, err)
		}
	}
	if err := s.hook("before-latest"); err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(s.dir, latestFile), []byte(StepName(m.Step)+"\n"), !s.NoSync); err != nil {
		return fmt.Errorf("commit step %d: LATEST: %w", m.Step, err)
	}
	if err := s.hook("before-prune"); err != nil {
		return err
	}
	if s.Keep > 0 {
		if _, err := s.Prune(s.Keep); err != nil {
			return fmt.Errorf("commit step %d: %w", m.Step, err)
		}
	}
	return nil
}

// removeUnlisted deletes files in a step's temporary directory that m does
// not reference: leftovers of an earlier, crashed attempt at the same step
// (say with more ranks) would otherwise be published with it.
func removeUnlisted(dir string, m *Manifest) error {
	listed := map[string]bool{}
	for _, sh := range m.Shards {
		listed[sh.File] = true
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !listed[e.Name()] {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkShardFile is Commit's cheap check: the file has the reported size and
// its trailer the reported checksum (the writer computed it while writing).
func checkShardFile(path string, sh ShardInfo) error {
	r, err := OpenShard(path)
	if err != nil {
		return err
	}
	defer r.Close()
	if r.Size() != sh.Size || r.CRC() != sh.CRC {
		return fmt.Errorf("shard %s: size %d crc %08x, manifest says size %d crc %08x", path, r.Size(), r.CRC(), sh.Size, sh.CRC)
	}
	if r.Rank() != sh.Rank {
		return fmt.Errorf("shard %s: holds rank %d, manifest says %d", path, r.Rank(), sh.Rank)
	}
	return nil
}

// writeFileAtomic replaces path with data: temp file, fsync, rename, fsync dir.
func writeFileAtomic(path string, data []byte, sync bool) error {
	tmp := path + ".part"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil && sync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if sync {
		return syncDir(filepath.Dir(path))
	}
	return nil
}

// Steps lists the committed step directories, oldest first (their contents
// are not checked; Open does).
func (s *Store) Steps() ([]int64, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("list checkpoints: %w", err)
	}
	var steps []int64
	for _, e := range ents {
		if n, ok := parseStepName(e.Name()); ok && e.IsDir() {
			steps = append(steps, n)
		}
	}
	sort.Slice(steps, func(i, j int) bool { return steps[i] < steps[j] })
	return steps, nil
}

// Prune deletes all but the newest keep committed checkpoints and returns the
// steps removed. Each is first renamed to *.trash (atomic), so a crash midway
// never leaves a half-deleted directory that looks committed.
func (s *Store) Prune(keep int) ([]int64, error) {
	if keep <= 0 {
		return nil, fmt.Errorf("prune: keep %d must be positive", keep)
	}
	steps, err := s.Steps()
	if err != nil {
		return nil, err
	}
	if len(steps) <= keep {
		return nil, nil
	}
	var removed []int64
	for _, st := range steps[:len(steps)-keep] {
		trash := s.StepDir(st) + trashSuffix
		if err := os.Rename(s.StepDir(st), trash); err != nil {
			return removed, fmt.Errorf("prune step %d: %w", st, err)
		}
		if err := os.RemoveAll(trash); err != nil {
			return removed, fmt.Errorf("prune step %d: %w", st, err)
		}
		removed = append(removed, st)
	}
	return removed, nil
}

// Cleanup removes incomplete (*.tmp) and half-deleted (*.trash) directories
// and stray temporary files, returning their names. Call it when no
// checkpoint is being written (coordinator start-up).
func (s *Store) Cleanup() ([]string, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("cleanup: %w", err)
	}
	var removed []string
	var errs []error
	for _, e := range ents {
		name := e.Name()
		isTmpDir := e.IsDir() && (strings.HasSuffix(name, tmpSuffix) || strings.HasSuffix(name, trashSuffix))
		if _, ok := parseStepName(strings.TrimSuffix(strings.TrimSuffix(name, tmpSuffix), trashSuffix)); !ok {
			isTmpDir = false
		}
		isPart := !e.IsDir() && name == latestFile+".part"
		if !isTmpDir && !isPart {
			continue
		}
		if err := os.RemoveAll(filepath.Join(s.dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, name)
	}
	if len(errs) > 0 {
		return removed, fmt.Errorf("cleanup: %w", errors.Join(errs...))
	}
	return removed, nil
}

// Latest returns the step LATEST names, or ok=false if it is missing or
// unreadable.
func (s *Store) Latest() (int64, bool) {
	b, err := os.ReadFile(filepath.Join(s.dir, latestFile))
	if err != nil || len(b) > 256 {
		return 0, false
	}
	return parseStepName(strings.TrimSpace(string(b)))
}
