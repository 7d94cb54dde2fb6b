//! `GET /api/cluster`: every store member as this instance sees it (role,
//! raft term, applied index, db size, health), for the console's cluster page.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::state::AppState;

pub async fn cluster(State(state): State<Arc<AppState>>) -> Json<Value> {
    let client = state.store.client.clone();
    // Names and IDs from the member list; the members' own Status for the rest.
    let names: HashMap<u64, (String, Vec<String>)> = match client.member_list().await {
        Ok(r) => r
            .members
            .into_iter()
            .map(|m| (m.id, (m.name, m.client_ur_ls)))
            .collect(),
        Err(_) => HashMap::new(),
    };
    let mut set = tokio::task::JoinSet::new();
    for (i, ep) in client.endpoints().into_iter().enumerate() {
        let c = client.clone();
        set.spawn(async move { (i, ep.clone(), c.status(&ep).await) });
    }
    let mut rows = Vec::new();
    while let Some(Ok((i, ep, st))) = set.join_next().await {
        let row = match st {
            Ok(s) => {
                let id = s.header.as_ref().map(|h| h.member_id).unwrap_or(0);
                json!({
                    "endpoint": ep,
                    "name": names.get(&id).map(|n| n.0.clone()).unwrap_or_default(),
                    "id": format!("{id:x}"),
                    "role": if s.leader == 0 { "no leader" } else if s.leader == id { "leader" } else if s.is_learner { "learner" } else { "follower" },
                    "raft_term": s.raft_term,
                    "raft_index": s.raft_index,
                    "applied_index": s.raft_applied_index,
                    "db_size": s.db_size,
                    "version": s.version,
                    "healthy": s.leader != 0 && s.errors.is_empty(),
                    "errors": s.errors,
                })
            }
            Err(e) => json!({ "endpoint": ep, "healthy": false, "error": e.to_string() }),
        };
        rows.push((i, row));
    }
    rows.sort_by_key(|(i, _)| *i);
    Json(json!({ "members": rows.into_iter().map(|(_, r)| r).collect::<Vec<_>>() }))
}
