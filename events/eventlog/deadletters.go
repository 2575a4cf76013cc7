package eventlog

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// StoredDeadLetter is a dead letter as the dead-letter stream holds it.
type StoredDeadLetter struct {
	Seq       uint64    `json:"seq"`
	Subject   string    `json:"subject"`
	ID        string    `json:"id,omitempty"`
	Source    string    `json:"source,omitempty"`
	Reason    string    `json:"reason"`
	Detail    string    `json:"detail,omitempty"`
	Time      time.Time `json:"time"`
	Truncated string    `json:"truncatedFrom,omitempty"`
	Body      string    `json:"body"`
}

// ReadDeadLetters returns the newest limit dead letters of the stream
// (DefaultDeadLetterStreamName if empty), oldest first, so that an operator can
// see what the webhook could not turn into events and why.
func ReadDeadLetters(ctx context.Context, js jetstream.JetStream, stream string, limit int) ([]StoredDeadLetter, error) {
	if stream == "" {
		stream = DefaultDeadLetterStreamName
	}
	if limit <= 0 {
		limit = 100
	}
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, fmt.Errorf("events: dead-letter stream %s: %w", stream, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("events: dead-letter stream %s: %w", stream, err)
	}
	first, last := info.State.FirstSeq, info.State.LastSeq
	if info.State.Msgs == 0 {
		return nil, nil
	}
	from := first
	if last >= uint64(limit) && last-uint64(limit)+1 > first {
		from = last - uint64(limit) + 1
	}
	var out []StoredDeadLetter
	for seq := from; seq <= last; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // aged out or deleted meanwhile
		}
		if err != nil {
			return out, fmt.Errorf("events: dead letter %d: %w", seq, err)
		}
		d := StoredDeadLetter{Seq: m.Sequence, Subject: m.Subject, Time: m.Time, Body: string(m.Data),
			ID: m.Header.Get(HeaderDeadLetterID), Source: m.Header.Get(HeaderDeadLetterSource),
			Reason: m.Header.Get(HeaderDeadLetterReason), Detail: m.Header.Get(HeaderDeadLetterDetail),
			Truncated: m.Header.Get(HeaderDeadLetterTruncated)}
		if t, err := time.Parse(time.RFC3339Nano, m.Header.Get(HeaderDeadLetterTime)); err == nil {
			d.Time = t
		}
		out = append(out, d)
	}
	return out, nil
}
