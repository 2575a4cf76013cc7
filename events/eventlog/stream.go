package eventlog

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Default names and limits of the event log and the dead-letter stream.
const (
	DefaultStreamName           = "REFGC_EVENTS"
	DefaultDeadLetterStreamName = "REFGC_DEADLETTER"
	DefaultDuplicateWindow      = time.Hour
	DefaultDeadLetterMaxAge     = 30 * 24 * time.Hour
)

// ErrStreamConflict is returned (wrapped) by EnsureStream when a stream of
// the same name exists with a configuration refgc cannot adopt (other
// subjects, memory storage, another retention policy), or when another
// stream already captures refgc's subjects. refgc never rewrites such a
// stream: resolve the conflict by hand or configure another name.
var ErrStreamConflict = errors.New("events: conflicting stream configuration")

// StreamID returns a stream's identity: its name and its creation time. A
// stream deleted and created again under the same name has another one.
func StreamID(info *jetstream.StreamInfo) string {
	return info.Config.Name + "@" + info.Created.UTC().Format(time.RFC3339Nano)
}

// StreamConfig configures the event log and its dead-letter stream. The
// zero value gives the defaults.
type StreamConfig struct {
	// Name of the event log stream; DefaultStreamName if empty.
	Name string
	// Replicas of both streams; 1 if zero. More need a JetStream cluster.
	Replicas int
	// MaxAge of events; zero keeps them for ever, which is the default
	// because the log is the history that rebuilds the projection.
	MaxAge time.Duration
	// MaxBytes bounds the event log; zero means unlimited.
	MaxBytes int64
	// Duplicates is the deduplication window on Nats-Msg-Id;
	// DefaultDuplicateWindow if zero.
	Duplicates time.Duration

	// DeadLetterName of the dead-letter stream; DefaultDeadLetterStreamName if empty.
	DeadLetterName string
	// DeadLetterMaxAge bounds how long dead letters are kept;
	// DefaultDeadLetterMaxAge if zero.
	DeadLetterMaxAge time.Duration
}

func (c StreamConfig) withDefaults() StreamConfig {
	if c.Name == "" {
		c.Name = DefaultStreamName
	}
	if c.Replicas <= 0 {
		c.Replicas = 1
	}
	if c.Duplicates <= 0 {
		c.Duplicates = DefaultDuplicateWindow
	}
	if c.DeadLetterName == "" {
		c.DeadLetterName = DefaultDeadLetterStreamName
	}
	if c.DeadLetterMaxAge <= 0 {
		c.DeadLetterMaxAge = DefaultDeadLetterMaxAge
	}
	return c
}

func (c StreamConfig) eventStream() jetstream.StreamConfig {
	maxBytes := c.MaxBytes
	if maxBytes <= 0 {
		maxBytes = -1
	}
	return jetstream.StreamConfig{
		Name:        c.Name,
		Description: "refgc event log: the history of the registry's reference graph",
		Subjects:    []string{SubjectPrefix + ">"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Discard:     jetstream.DiscardOld,
		Replicas:    c.Replicas,
		MaxAge:      c.MaxAge,
		MaxBytes:    maxBytes,
		MaxMsgs:     -1,
		Duplicates:  c.Duplicates,
	}
}

func (c StreamConfig) deadLetterStream() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        c.DeadLetterName,
		Description: "refgc dead letters: notifications that could not become events",
		Subjects:    []string{DeadLetterPrefix + ">"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Discard:     jetstream.DiscardOld,
		Replicas:    c.Replicas,
		MaxAge:      c.DeadLetterMaxAge,
		MaxBytes:    -1,
		MaxMsgs:     -1,
		Duplicates:  c.Duplicates,
	}
}

// EnsureStream creates or updates, idempotently, the event log stream and
// the dead-letter stream, and returns the event log. An existing stream is
// adopted when its subjects, storage and retention are refgc's; its limits
// (replicas, age, size, duplicate window) are then brought to cfg. Anything
// else is an error wrapping ErrStreamConflict.
func EnsureStream(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) (jetstream.Stream, error) {
	cfg = cfg.withDefaults()
	if _, err := ensure(ctx, js, cfg.deadLetterStream()); err != nil {
		return nil, err
	}
	return ensure(ctx, js, cfg.eventStream())
}

func ensure(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig) (jetstream.Stream, error) {
	s, err := js.Stream(ctx, want.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		s, err = js.CreateStream(ctx, want)
		if err == nil {
			return s, nil
		}
		if isSubjectOverlap(err) {
			return nil, fmt.Errorf("%w: stream %s: subjects %v are already captured by another stream: %v",
				ErrStreamConflict, want.Name, want.Subjects, err)
		}
		if !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return nil, fmt.Errorf("events: create stream %s: %w", want.Name, err)
		}
		// Created concurrently by another instance: adopt it below.
		s, err = js.Stream(ctx, want.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("events: look up stream %s: %w", want.Name, err)
	}
	have := s.CachedInfo().Config
	if err := conflicts(want, have); err != nil {
		return nil, err
	}
	if limitsMatch(want, have) {
		return s, nil
	}
	upd := have
	upd.Replicas = want.Replicas
	upd.MaxAge = want.MaxAge
	upd.MaxBytes = want.MaxBytes
	upd.MaxMsgs = want.MaxMsgs
	upd.Duplicates = want.Duplicates
	upd.Discard = want.Discard
	s, err = js.UpdateStream(ctx, upd)
	if err != nil {
		return nil, fmt.Errorf("events: update stream %s: %w", want.Name, err)
	}
	return s, nil
}

// conflicts reports what in an existing stream refgc must not change.
func conflicts(want, have jetstream.StreamConfig) error {
	subj := slices.Clone(have.Subjects)
	slices.Sort(subj)
	switch {
	case !slices.Equal(subj, want.Subjects):
		return fmt.Errorf("%w: stream %s captures subjects %v, refgc needs exactly %v",
			ErrStreamConflict, want.Name, have.Subjects, want.Subjects)
	case have.Storage != want.Storage:
		return fmt.Errorf("%w: stream %s uses %s storage, refgc needs %s storage",
			ErrStreamConflict, want.Name, have.Storage, want.Storage)
	case have.Retention != want.Retention:
		return fmt.Errorf("%w: stream %s has retention %s, refgc needs %s",
			ErrStreamConflict, want.Name, have.Retention, want.Retention)
	case have.Mirror != nil || len(have.Sources) > 0:
		return fmt.Errorf("%w: stream %s is a mirror or has sources", ErrStreamConflict, want.Name)
	}
	return nil
}

func limitsMatch(want, have jetstream.StreamConfig) bool {
	return have.Replicas == want.Replicas && have.MaxAge == want.MaxAge &&
		have.MaxBytes == want.MaxBytes && have.MaxMsgs == want.MaxMsgs &&
		have.Duplicates == want.Duplicates && have.Discard == want.Discard
}

func isSubjectOverlap(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == 10065 // JSStreamSubjectOverlapErr
}
