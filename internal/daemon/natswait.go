package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/refgc/refgc/events/eventlog"
)

// Waiting for an external NATS server at start: the first retry after
// natsRetryFirst, each wait doubling up to natsRetryMax.
const (
	natsRetryFirst = 500 * time.Millisecond
	natsRetryMax   = 15 * time.Second
)

// connectRetry connects to the NATS server at url, and while it does not
// answer (not started yet, as in a compose start-up, or restarting), waits
// and tries again with exponential backoff until ctx ends, saying each time
// what it waits for. A refused authorization is not retried: it will not
// change by itself.
func connectRetry(ctx context.Context, url string, opts eventlog.ConnectOptions, log *slog.Logger) (*nats.Conn, error) {
	wait := natsRetryFirst
	for attempt := 1; ; attempt++ {
		nc, err := eventlog.Connect(url, opts)
		if err == nil {
			if attempt > 1 {
				log.Info("connected to NATS", "url", nc.ConnectedUrlRedacted(), "attempts", attempt)
			}
			return nc, nil
		}
		if errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) || errors.Is(err, nats.ErrAuthRevoked) {
			return nil, fmt.Errorf("NATS at %s refused the credentials (check --nats-token, --nats-user/--nats-password, --nats-creds): %w", url, err)
		}
		log.Warn("waiting for NATS: the event log is unreachable, refgc cannot start without it", "url", url,
			"attempt", attempt, "retryIn", wait.String(), "err", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("gave up waiting for NATS at %s: %w (last error: %w)", url, ctx.Err(), err)
		case <-time.After(wait):
		}
		wait = min(2*wait, natsRetryMax)
	}
}
