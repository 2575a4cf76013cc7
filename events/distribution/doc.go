// Package distribution is refgc's ingest from a CNCF Distribution registry:
// the translation of Distribution's notifications into domain events
// (Translate, with a ManifestReader that reads the subject of a pushed
// manifest) and the webhook that receives them, publishes the events to
// the event log and dead-letters what it cannot translate.
//
// In refgc's flow, notification → event → log → projection → collector →
// storage, this package is the first two steps: a notification becomes
// events, and they go to the log (events/eventlog).
package distribution
