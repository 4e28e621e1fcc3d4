//! Who is calling and what they may do.
//!
//! - [`identity`]: SPIFFE-style identities (`spiffe://<trust-domain>/enforcer/<instance>`,
//!   `spiffe://<trust-domain>/principal/<name>`) read from a client certificate's URI SAN.
//! - [`policy`]: the TOML policy file mapping principals to a role and an instance scope,
//!   with bearer tokens stored only as SHA-256.
//! - [`Authenticator`]: credentials (a verified certificate, a bearer token, request
//!   headers) in, a [`Caller`] out; in development mode every caller is `anonymous`, admin.
//! - [`Caller::authorize`]: the one authorization check every door (gRPC today, the
//!   console's JSON API later) calls with the method and instance.
//!
//! Transport-agnostic: TLS verification of the chain happens before this crate is asked,
//! and mapping [`AuthError`] to a wire status is the caller's job.

mod authenticator;
mod caller;
mod glob;
pub mod identity;
pub mod policy;

pub use authenticator::{Authenticator, Credentials, Mode, ACTOR_HEADER, ON_BEHALF_OF_HEADER};
pub use caller::{Action, AuthError, Caller};
pub use glob::{InstanceGlob, InvalidGlob};
pub use identity::{
    certificate_end, certificate_end_pem, Identity, PrincipalName, TrustDomain, CERTIFICATE_WARNING,
};
pub use policy::{Grant, Policy, PolicyError, Role};
