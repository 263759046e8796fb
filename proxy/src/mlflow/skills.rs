//! MLflow 3.18's skill registry: content uploaded for a skill version lives under `skills/` of
//! the artifact destination and is immutable. Stock MLflow refuses every write to it through the
//! artifact routes (PUT, DELETE, `mpu/*`) with a 403, and so does the proxy when MLflow is 3.18+.

use crate::mlflow::path::decode;

/// Stock MLflow's words.
pub const IMMUTABLE: &str = "Skill upload content is immutable; register a new version instead";

/// `is_skill_upload_namespace`: whether a path can resolve into the skill upload tree, its
/// `workspaces/<ws>/` prefix (any case) and `.` and empty segments aside.
pub fn is_skill_upload_namespace(path: &str) -> bool {
    // A path that cannot be fully decoded is refused by the artifact handler anyway.
    let Ok(decoded) = decode(path) else {
        return false;
    };
    let segments: Vec<&str> = decoded
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    let rest = match segments.as_slice() {
        [first, _, rest @ ..] if first.to_lowercase() == "workspaces" => rest,
        all => all,
    };
    rest.first().is_some_and(|s| s.to_lowercase() == "skills")
}

#[cfg(test)]
mod tests {
    use super::is_skill_upload_namespace as skills;

    #[test]
    fn the_skill_tree_in_any_spelling() {
        assert!(skills("skills"));
        assert!(skills("skills/x/0123/SKILL.md"));
        assert!(skills("SKILLS/x"));
        assert!(skills("./skills/x"));
        assert!(skills("//skills"));
        assert!(skills("sk%69lls/x"));
        assert!(skills("sk%2569lls/x"));
        assert!(skills("workspaces/team/skills/x"));
        assert!(skills("Workspaces/team/./skills"));
        assert!(!skills("workspaces/skills"));
        assert!(!skills("1/skills/x"));
        assert!(!skills("skillsx/y"));
        assert!(!skills(""));
        assert!(!skills("workspaces"));
    }
}
