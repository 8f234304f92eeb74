//! Reuse across reloads: a stateful runtime object (pool health, JWKS and token cache,
//! limiter counters) is carried into the next generation when its definition is unchanged.

use std::collections::HashMap;
use std::sync::Arc;

/// The previous generation's object named `name`, when `unchanged` says its definition is the
/// same; the caller builds a new one otherwise.
pub fn reuse<T>(
    previous: Option<&HashMap<String, Arc<T>>>,
    name: &str,
    unchanged: impl FnOnce(&T) -> bool,
) -> Option<Arc<T>> {
    previous
        .and_then(|p| p.get(name))
        .filter(|live| unchanged(live))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unchanged_object_is_carried_over() {
        let live: HashMap<String, Arc<u32>> = [("a".to_string(), Arc::new(1))].into();
        let kept = reuse(Some(&live), "a", |v| *v == 1).expect("kept");
        assert!(
            Arc::ptr_eq(&kept, &live["a"]),
            "the same object, not a copy"
        );
        assert!(reuse(Some(&live), "a", |v| *v == 2).is_none(), "changed");
        assert!(reuse(Some(&live), "b", |_| true).is_none(), "new name");
        assert!(reuse::<u32>(None, "a", |_| true).is_none(), "first load");
    }
}
