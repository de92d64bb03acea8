//! The hub's failures in words a user can act on: which of network, login, name or disk it was.

use super::env::HubEnv;
use super::id::HubId;
use anyhow::anyhow;
use hf_hub::api::sync::ApiError;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// No answer: no route, refused, timed out, cut off.
    Network,
    /// An HTTP status other than success.
    Status(u16),
    DiskFull,
    Other,
}

pub fn classify(e: &ApiError) -> Kind {
    match e {
        ApiError::RequestError(e) => classify_ureq(e),
        ApiError::IoError(e) => classify_io(e),
        ApiError::TooManyRetries(inner) => classify(inner),
        _ => Kind::Other,
    }
}

pub fn classify_ureq(e: &ureq::Error) -> Kind {
    use ureq::Error as U;
    match e {
        U::StatusCode(code) => Kind::Status(*code),
        U::ConnectionFailed | U::HostNotFound | U::Timeout(_) | U::BodyStalled => Kind::Network,
        U::Io(io) => match classify_io(io) {
            Kind::DiskFull => Kind::DiskFull,
            _ => Kind::Network,
        },
        _ => Kind::Other,
    }
}

fn classify_io(e: &std::io::Error) -> Kind {
    let enospc = cfg!(unix) && e.raw_os_error() == Some(28);
    if enospc || e.kind() == std::io::ErrorKind::StorageFull {
        Kind::DiskFull
    } else {
        Kind::Other
    }
}

/// The message for a failed listing (`file` = None) or download of `file`.
pub fn explain(
    env: &HubEnv,
    id: &HubId,
    file: Option<&str>,
    detail: &str,
    kind: Kind,
) -> anyhow::Error {
    let what = match file {
        Some(f) => format!("{f} of {id}"),
        None => id.to_string(),
    };
    match kind {
        Kind::Status(401 | 403) => {
            let hint = if env.token.is_some() {
                "the token in use (HF_TOKEN or the saved login) may not read it: accept the model's terms on its page, or use a token that may"
            } else {
                "if the repository is gated or private, accept its terms on its page and set HF_TOKEN to an access token (https://huggingface.co/settings/tokens)"
            };
            anyhow!("{}: {what}: access refused ({detail}); {hint}", env.endpoint)
        }
        Kind::Status(404) => match file {
            Some(f) => anyhow!("{}: no file {f} in {id} ({detail})", env.endpoint),
            None if env.token.is_none() => anyhow!(
                "{}: no such model repository or revision: {id} ({detail}); check the name on the hub (a private repository answers so too without HF_TOKEN)",
                env.endpoint
            ),
            None => anyhow!(
                "{}: no such model repository or revision: {id} ({detail}); check the name on the hub",
                env.endpoint
            ),
        },
        Kind::Network => anyhow!(
            "{}: {what}: the hub could not be reached ({detail}); what was received is kept and the next run resumes",
            env.endpoint
        ),
        Kind::DiskFull => anyhow!(
            "{what}: the disk holding {} is full ({detail}); free space or point HF_HUB_CACHE at a larger disk, and run again to resume",
            env.cache.display()
        ),
        Kind::Status(_) | Kind::Other => anyhow!("{}: {what}: {detail}", env.endpoint),
    }
}
