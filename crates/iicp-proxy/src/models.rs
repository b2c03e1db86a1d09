//! The mesh's models: what the directory offers for `llm:chat:v1`, cached briefly.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iicp_client::{Client, DiscoverOptions, Error as ClientError, CHAT_INTENT};
use parking_lot::Mutex;

/// Most nodes read per listing (the directory's cap).
const LISTING_LIMIT: u32 = 50;
/// Most distinct models kept from one listing.
const MAX_MODELS: usize = 512;
/// A forced refresh (an unknown model) happens at most this often.
const MIN_REFRESH: Duration = Duration::from_secs(1);

/// A model of the mesh and how many listed nodes serve it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MeshModel {
    /// The model name as nodes advertise it.
    pub(crate) id: String,
    /// Nodes listing it.
    pub(crate) nodes: usize,
}

/// The cached model list.
pub(crate) struct Catalog {
    client: Client,
    options: DiscoverOptions,
    ttl: Duration,
    cached: Mutex<Option<(Instant, Arc<Vec<MeshModel>>)>>,
}

/// Whether `model` means "any model of the mesh" (`iicp`, empty, absent).
pub(crate) fn is_any(model: Option<&str>) -> bool {
    model.is_none_or(|m| m.trim().is_empty() || m.eq_ignore_ascii_case("iicp"))
}

impl Catalog {
    /// A catalog listing through `client` with these discovery options.
    pub(crate) fn new(client: Client, options: DiscoverOptions, ttl: Duration) -> Self {
        Self {
            client,
            options,
            ttl,
            cached: Mutex::new(None),
        }
    }

    /// The models, from the cache when it is younger than the TTL.
    pub(crate) async fn models(&self) -> Result<Arc<Vec<MeshModel>>, ClientError> {
        if let Some((at, list)) = self.cached.lock().as_ref() {
            if at.elapsed() < self.ttl {
                return Ok(Arc::clone(list));
            }
        }
        self.refresh().await
    }

    /// Whether the mesh offers `model`: from the cache, then (an unknown name) from a
    /// fresh listing unless the cache is under a second old.
    pub(crate) async fn offers(&self, model: &str) -> Result<bool, ClientError> {
        let list = self.models().await?;
        if list.iter().any(|m| m.id == model) {
            return Ok(true);
        }
        let young = self
            .cached
            .lock()
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < MIN_REFRESH);
        if young {
            return Ok(false);
        }
        Ok(self.refresh().await?.iter().any(|m| m.id == model))
    }

    async fn refresh(&self) -> Result<Arc<Vec<MeshModel>>, ClientError> {
        let mut options = self.options.clone();
        options.limit = Some(LISTING_LIMIT);
        options.model = None;
        let nodes = self.client.discover(CHAT_INTENT, options).await?;
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for node in &nodes {
            for model in node.models.iter().flatten() {
                if counts.len() >= MAX_MODELS && !counts.contains_key(model) {
                    continue;
                }
                *counts.entry(model.clone()).or_default() += 1;
            }
        }
        let list: Arc<Vec<MeshModel>> = Arc::new(
            counts
                .into_iter()
                .map(|(id, nodes)| MeshModel { id, nodes })
                .collect(),
        );
        *self.cached.lock() = Some((Instant::now(), Arc::clone(&list)));
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use super::is_any;

    #[test]
    fn any_model() {
        assert!(is_any(None));
        assert!(is_any(Some("")));
        assert!(is_any(Some("IICP")));
        assert!(!is_any(Some("echo")));
    }
}
