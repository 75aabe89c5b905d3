package launch

import (
	"fmt"
	"io"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/moetrain/moetrain/cluster"
)

// barView is the terminal progress bar: steps done, ETA, and the latest
// loss, validation loss and throughput in the description.
type barView struct {
	w   io.Writer
	bar *progressbar.ProgressBar
}

func newBarView(w io.Writer, total int) *barView {
	return &barView{w: w, bar: progressbar.NewOptions(total,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription("waiting"),
		progressbar.OptionShowCount(),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionSetElapsedTime(true),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionShowDescriptionAtLineEnd(),
	)}
}

func (b *barView) set(s cluster.Status) {
	b.bar.Describe(fmt.Sprintf("loss %.4f  %s  %.0f tok/s", s.Loss, valText(s), s.TokensPerSec))
	_ = b.bar.Set(s.Step)
}

func (b *barView) finish() {
	_ = b.bar.Exit()
	fmt.Fprintln(b.w)
}
