//! Which folders of the destination belong to which MLflow object. MLflow writes, under an
//! experiment's artifact location (`<experiment id>/` by default):
//!
//! - a run's files under `<run id>/` (32 lowercase hex digits; `artifacts/` inside),
//! - a logged model's under `models/m-<32 hex>/`,
//! - a trace's under `traces/tr-<32 hex>/` (MLflow 2 traces: `traces/<32 hex>/`).
//!
//! Anything else is of no known shape and is never a candidate.

/// The kind of MLflow object a folder belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Run,
    LoggedModel,
    Trace,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Run, Kind::LoggedModel, Kind::Trace];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Run => "run",
            Kind::LoggedModel => "logged_model",
            Kind::Trace => "trace",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A folder that belongs to one MLflow object, if that object still exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub kind: Kind,
    pub id: String,
    /// Relative to the destination, ending with `/`: `1/<run id>/`, `1/models/m-…/`.
    pub path: String,
}

/// What a folder directly under an experiment's location holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Child {
    Run,
    Models,
    Traces,
    Other,
}

pub fn child(name: &str) -> Child {
    match name {
        "models" => Child::Models,
        "traces" => Child::Traces,
        name if is_hex32(name) => Child::Run,
        _ => Child::Other,
    }
}

/// An experiment folder of MLflow's default layout: its numeric id.
pub fn is_experiment(name: &str) -> bool {
    !name.is_empty() && name.len() <= 20 && name.bytes().all(|b| b.is_ascii_digit())
}

pub fn is_run_id(name: &str) -> bool {
    is_hex32(name)
}

pub fn is_logged_model_id(name: &str) -> bool {
    name.strip_prefix("m-").is_some_and(is_hex32)
}

pub fn is_trace_id(name: &str) -> bool {
    name.strip_prefix("tr-").is_some_and(is_hex32) || is_hex32(name)
}

/// `uuid.uuid4().hex`: 32 lowercase hex digits.
fn is_hex32(name: &str) -> bool {
    name.len() == 32 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The run and logged-model ids named in a string such as a model version's `source`
/// (`mlflow-artifacts:/1/<run id>/artifacts/model`, `runs:/<run id>/model`, `models:/m-…`).
pub fn ids_in(text: &str) -> impl Iterator<Item = &str> {
    text.split(['/', ':', '?', '#', '@'])
        .filter(|part| is_run_id(part) || is_logged_model_id(part))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn shapes() {
        assert_eq!(child(RUN), Child::Run);
        assert_eq!(child("models"), Child::Models);
        assert_eq!(child("traces"), Child::Traces);
        assert_eq!(child(&RUN.to_uppercase()), Child::Other);
        assert_eq!(child(&RUN[1..]), Child::Other);
        assert_eq!(child("datasets"), Child::Other);
        assert!(is_logged_model_id(&format!("m-{RUN}")));
        assert!(!is_logged_model_id(RUN));
        assert!(is_trace_id(&format!("tr-{RUN}")));
        assert!(is_trace_id(RUN));
        assert!(!is_trace_id("tr-x"));
        assert!(is_experiment("0") && is_experiment("123"));
        assert!(!is_experiment("") && !is_experiment("workspaces") && !is_experiment("1a"));
    }

    #[test]
    fn ids_in_model_version_sources() {
        let model = format!("m-{RUN}");
        assert_eq!(
            ids_in(&format!("mlflow-artifacts:/1/{RUN}/artifacts/model")).collect::<Vec<_>>(),
            [RUN]
        );
        assert_eq!(
            ids_in(&format!("runs:/{RUN}/model")).collect::<Vec<_>>(),
            [RUN]
        );
        assert_eq!(
            ids_in(&format!("models:/{model}")).collect::<Vec<_>>(),
            [model.as_str()]
        );
        assert_eq!(ids_in("models:/name/3").count(), 0);
    }
}
