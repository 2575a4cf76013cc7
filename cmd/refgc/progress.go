package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/refgc/refgc/internal/daemon"
)

// progressPoll reads how far a long pass is; ok is false when it cannot
// tell (no pass runs yet, the daemon does not answer).
type progressPoll func(ctx context.Context) (p daemon.PassProgress, ok bool)

// withProgress runs run, and meanwhile shows the progress poll reads as a
// bar on standard error when it is a terminal (a script's stderr stays
// clean). Walks of storage have no total in advance: the bar's total is
// the estimate from what the projection holds, or a spinner without one.
func withProgress(cmd *cobra.Command, poll progressPoll, run func() error) error {
	w := cmd.ErrOrStderr()
	if !isTerminal(w) {
		return run()
	}
	ctx, cancel := context.WithCancel(cmd.Context())
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		showProgress(ctx, w, poll)
	}()
	err := run()
	cancel()
	<-stopped
	return err
}

func showProgress(ctx context.Context, w io.Writer, poll progressPoll) {
	bar := progressbar.NewOptions64(-1, progressbar.OptionSetWriter(w), progressbar.OptionShowCount(),
		progressbar.OptionClearOnFinish(), progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionSetDescription("waiting for the pass to start"), progressbar.OptionSetWidth(30),
		// No spinner goroutine: it would render while the updates below do.
		progressbar.OptionSetSpinnerChangeInterval(0))
	defer func() { _ = bar.Clear() }()
	t := time.NewTicker(300 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p, ok := poll(ctx)
		if !ok || !p.Running {
			continue
		}
		done := p.Revisions + p.Blobs
		desc := fmt.Sprintf("%s: %d repositories, %d revisions, %d blobs", p.Pass, p.Repositories, p.Revisions, p.Blobs)
		if p.Replayed > 0 {
			done, desc = p.Replayed, fmt.Sprintf("%s: %d events replayed", p.Pass, p.Replayed)
		}
		if p.Expected > 0 && bar.GetMax64() != max(p.Expected, done+1) {
			bar.ChangeMax64(max(p.Expected, done+1))
		}
		bar.Describe(desc)
		_ = bar.Set64(done)
	}
}

// daemonProgress polls the daemon's /readyz, whose body shows a running pass.
func daemonProgress(addr string) progressPoll {
	return func(ctx context.Context) (daemon.PassProgress, bool) {
		base, err := baseURL(addr)
		if err != nil {
			return daemon.PassProgress{}, false
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/readyz", nil)
		if err != nil {
			return daemon.PassProgress{}, false
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return daemon.PassProgress{}, false
		}
		defer resp.Body.Close()
		var body struct {
			Pass *daemon.PassProgress `json:"pass"`
		}
		if json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&body) != nil || body.Pass == nil {
			return daemon.PassProgress{}, false
		}
		return *body.Pass, true
	}
}
