// Package eventlog is refgc's event log on NATS JetStream: the stream and
// its subjects, the Publisher that appends events (deduplicated by id), the
// Follower that feeds them in order into a projection, dead letters, the
// embedded NATS server, leader election among replicas, the Log interface
// that the collector and the reconciler write through, and the replay of
// the whole stream that rebuilds a projection.
//
// In refgc's flow, notification → event → log → projection → collector →
// storage, this package is the log: events/distribution and the collector
// publish into it, and a Follower applies it to the refcount projection.
// The projection does not import it: a library user who only wants the
// projection pays for no message broker.
package eventlog
