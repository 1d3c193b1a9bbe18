//! What the two gRPC sidecars share and the control plane does not: the gRPC server that
//! answers Envoy's side calls, the threads it serves them on and the allocator they run
//! with ([`grpc`]), and OpenTelemetry spans for those calls ([`telemetry`]).
//!
//! Kept apart from `tollgate-runtime` so that the control plane, which serves xDS through
//! tonic and exports no spans, links neither jemalloc nor OpenTelemetry.
#![forbid(unsafe_code)]

pub mod grpc;
pub mod telemetry;
