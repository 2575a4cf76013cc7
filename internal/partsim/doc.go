// Package partsim simulates a registry far larger than one machine's
// projection and measures how refgc's reference graph would partition
// (docs/PARTITIONING.md): per partition, its objects, the bytes refcount
// would keep for them and the events routed to it; per push, the
// statements that cross from repository partitions to digest partitions;
// and what one partition's failure stalls and replays.
//
// The registry is generated statistically, repository by repository: sizes
// are Zipf-distributed, images share base layers by popularity, some
// repositories push multi-platform indexes or sign every push, and some
// pushes copy (mount) an image from another repository. Only one
// repository's state, a pool of base layers and a reservoir of recent
// images are held at once, so memory stays bounded whatever the size, and
// nothing is sampled: every object is generated and counted.
//
// Three schemes are measured at each partition count: SchemeRepo (every
// node of a repository in its partition, blob nodes copied into every
// partition that references them), SchemeRepoDigest (repository-scoped
// nodes by repository, blob nodes by digest range, fed by statements) and
// SchemePlaced (the same with the largest repositories placed explicitly).
//
// Invariants, checked by the tests:
//   - Every object is counted once: the repository partitions hold exactly
//     the tags, revisions and layer links, the digest partitions exactly the
//     blobs; SchemeRepo's copies are at least the blobs, and exactly them on
//     one partition.
//   - What is sent is received: the statements the pushes send equal those
//     the digest partitions receive, and the edges they add equal the layer
//     links plus the revisions (each holds exactly one blob).
//   - The byte model is refcount's layout: applied to a real projection, a
//     generated registry gives the same keys and, to 1 %, the same bytes.
//   - A run is a function of its Config: the same seed, the same result.
package partsim
