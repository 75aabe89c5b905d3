package cluster

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/term"
)

// LogOptions say where a process's logs go: JSON lines to File (from
// FileLevel up) and readable lines to Console (from Level up).
type LogOptions struct {
	File      string        // "" = no JSON file
	FileLevel zerolog.Level // default debug
	Console   io.Writer     // nil = no console output
	Level     zerolog.Level // console level (the zero value is debug)
	NoColor   bool          // also implied when Console is a file that is not a terminal
}

// levelWriter filters one output of a multi-writer by level.
type levelWriter struct {
	w   io.Writer
	min zerolog.Level
}

func (l levelWriter) Write(p []byte) (int, error) { return l.w.Write(p) }
func (l levelWriter) WriteLevel(lvl zerolog.Level, p []byte) (int, error) {
	if lvl < l.min {
		return len(p), nil
	}
	return l.w.Write(p)
}

// NewLogger builds the process logger; close the returned closer at exit.
func NewLogger(o LogOptions) (zerolog.Logger, io.Closer, error) {
	var outs []io.Writer
	var closer io.Closer = io.NopCloser(nil)
	if o.File != "" {
		if err := os.MkdirAll(filepath.Dir(o.File), 0o755); err != nil {
			return zerolog.Nop(), nil, fmt.Errorf("log file %s: %w", o.File, err)
		}
		f, err := os.OpenFile(o.File, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return zerolog.Nop(), nil, fmt.Errorf("log file: %w", err)
		}
		closer = f
		outs = append(outs, levelWriter{w: f, min: o.FileLevel})
	}
	if o.Console != nil {
		noColor := o.NoColor
		if f, ok := o.Console.(*os.File); ok && !term.IsTerminal(int(f.Fd())) {
			noColor = true
		}
		cw := zerolog.ConsoleWriter{Out: o.Console, TimeFormat: "15:04:05.000", NoColor: noColor}
		outs = append(outs, levelWriter{w: cw, min: o.Level})
	}
	if len(outs) == 0 {
		return zerolog.Nop(), closer, nil
	}
	zerolog.TimeFieldFormat = time.RFC3339Nano
	lg := zerolog.New(zerolog.MultiLevelWriter(outs...)).Level(zerolog.DebugLevel).With().Timestamp().Logger()
	return lg, closer, nil
}
