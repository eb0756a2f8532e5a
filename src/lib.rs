//! hopwarden: an Envoy external authorization server for service-to-service traffic.
//!
//! The request path, one module per stage:
//! Envoy's `CheckRequest` is converted at the gRPC edge ([`grpc::convert`], the only
//! code that sees protobuf) into an [`request::AuthzRequest`]; the [`engine`] resolves
//! the destination service and hop ([`resolve`]), looks up the decision cache
//! ([`cache`]), authenticates the caller ([`authn`]: bearer JWT and/or mTLS peer, into
//! a [`principal::Principal`]), evaluates the service's compiled rules ([`policy`]:
//! deny rules, then allow rules, else default deny) and returns a
//! [`decision::Decision`], which the edge converts back into a `CheckResponse`.
//! Policies are compiled once and swapped atomically on reload ([`reload`]).

#![forbid(unsafe_code)]

pub mod admin;
pub mod apikey;
pub mod apikey_tool;
pub mod authn;
pub mod cache;
pub mod cli;
pub mod config;
pub mod cores;
pub mod decision;
pub mod decision_log;
pub mod dev;
pub mod diff;
pub mod engine;
pub mod explain;
pub mod grpc;
pub mod http_authz;
pub mod limits;
pub mod listener;
pub mod policy;
pub mod principal;
pub mod reload;
pub mod request;
pub mod resolve;
pub mod review;
pub mod schema;
pub mod server;
pub mod suggest;
pub mod suite;
pub mod telemetry;
pub mod token;
pub mod yaml;
