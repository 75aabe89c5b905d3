// Package atomicfile replaces small files whole: a reader (or a crash)
// sees the old content or all of the new, never a mix. It is for state and
// result files (job state, summaries, profiles, tokenizers, certificates);
// checkpoint shards have their own writer.
package atomicfile

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Write replaces path with data (permissions perm): a temporary file in
// the same directory, fsynced, renamed over path, then the directory
// fsynced so that the rename survives a crash. On error path is unchanged
// and the temporary file is removed; the error names path.
func Write(path string, data []byte, perm os.FileMode) error {
	return write(path, perm, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	})
}

// WriteTo replaces path with what src writes, as Write does (src writes
// into the temporary file).
func WriteTo(path string, src io.WriterTo, perm os.FileMode) error {
	return write(path, perm, func(f *os.File) error {
		_, err := src.WriteTo(f)
		return err
	})
}

// write is Write with fill writing the content into the temporary file.
func write(path string, perm os.FileMode, fill func(*os.File) error) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	err = tmp.Chmod(perm)
	if err == nil {
		err = fill(tmp)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("write %s: sync directory: %w", path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("write %s: sync directory: %w", path, err)
	}
	return nil
}
