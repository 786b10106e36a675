//! The source side of the consistency check: the [`SourceReader`] port and
//! its two readers.
//!
//! A reader returns the source's **current** documents, each as the event the
//! publisher would emit for its current version (`time` = the document's
//! update time; `create` when its create and update times are equal, else
//! `update`). Deleted documents are simply absent.
//!
//! - [`ExportSource`] (`--source export:FILE`) reads a local file, either
//!   - the fixtures' change log (`{"project", "changes": [...]}`,
//!     `fixtures/README.md`): the current state is the last change of every
//!     path, a `delete` removes the document; or
//!   - a **document export** (`{"project", "documents": [...]}`): one object
//!     per live document with `__name__` (the full resource name
//!     `projects/P/databases/D/documents/...` or the relative path),
//!     `createTime` (optional), `updateTime` and `fields` — the document's
//!     fields as plain JSON with the contract's camelCase names and RFC 3339
//!     timestamps (what a converter of a `gcloud firestore export` gives).
//! - [`PagerSource`] (`--source firestore`) reads Firestore through the
//!   publisher's own [`DocumentPager`] adapter and mapping, so a document
//!   that the publisher could not map is reported here too (as unmappable),
//!   never silently skipped.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use mirror_schema::{EventFamily, MirrorEvent};
use publisher::backfill::{DocumentPager, Group, PageRequest};
use publisher::listen::UpsertOp;
use publisher::mapping::{route, upsert_event, SourceInfo};
use publisher::seed::{SeedChange, SeedFile};
use serde::Deserialize;

use super::Module;

/// Why the source could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    #[error("cannot read {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path} is not a fixtures change log or a document export: {error}")]
    Format { path: PathBuf, error: String },
    #[error("reading Firestore: {0}")]
    Firestore(String),
}

/// A source document the mapping rejected.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Unmappable {
    pub path: String,
    pub error: String,
}

/// The source's live documents in scope.
#[derive(Debug, Clone, Default)]
pub struct SourceDocs {
    /// The current version of each document, as the publisher's event.
    pub events: Vec<MirrorEvent>,
    pub unmappable: Vec<Unmappable>,
}

/// Where the consistency check reads the source from.
///
/// Contract: [`SourceReader::documents`] returns every live document of the
/// module's collections whose update time is at or after `since` (all when
/// `None`), at most once each, each as the publisher's event for its current
/// version; documents the mapping rejects are returned in `unmappable`.
pub trait SourceReader: Send + Sync {
    /// A short description for the report (`export:fixtures/…`, `firestore:project`).
    fn describe(&self) -> String;
    /// The Firestore project (for the `source` of repair events).
    fn project(&self) -> &str;
    fn documents(
        &self,
        module: Module,
        since: Option<DateTime<Utc>>,
    ) -> impl Future<Output = Result<SourceDocs, SourceError>> + Send;
}

fn in_module(module: Module, family: EventFamily) -> bool {
    match module {
        Module::All => true,
        Module::Dm => family != EventFamily::FollowEdge,
        Module::Follow => family == EventFamily::FollowEdge,
    }
}

/// A local file: the fixtures' change log or a document export (module docs).
#[derive(Debug, Clone)]
pub struct ExportSource {
    path: PathBuf,
    project: String,
    changes: Vec<SeedChange>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportFile {
    project: String,
    documents: Vec<ExportDocument>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportDocument {
    #[serde(rename = "__name__", alias = "name")]
    name: String,
    #[serde(rename = "createTime", default)]
    create_time: Option<String>,
    #[serde(rename = "updateTime")]
    update_time: String,
    #[serde(default)]
    fields: serde_json::Value,
}

impl ExportSource {
    pub fn load(path: &Path) -> Result<ExportSource, SourceError> {
        let text = std::fs::read_to_string(path).map_err(|error| SourceError::Io {
            path: path.to_owned(),
            error,
        })?;
        ExportSource::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<ExportSource, SourceError> {
        let format = |error: String| SourceError::Format {
            path: path.to_owned(),
            error,
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format(e.to_string()))?;
        if value.get("changes").is_some() {
            let file: SeedFile =
                serde_json::from_value(value).map_err(|e| format(e.to_string()))?;
            // The current state: the last change of each path; a delete removes it.
            let mut last: BTreeMap<String, SeedChange> = BTreeMap::new();
            for c in file.changes {
                if c.op == "delete" {
                    last.remove(&c.path);
                } else {
                    last.insert(c.path.clone(), c);
                }
            }
            Ok(ExportSource {
                path: path.to_owned(),
                project: file.project,
                changes: last.into_values().collect(),
            })
        } else {
            let file: ExportFile =
                serde_json::from_value(value).map_err(|e| format(e.to_string()))?;
            let changes = file
                .documents
                .into_iter()
                .map(|d| SeedChange {
                    path: publisher::value::relative_path(&d.name).to_owned(),
                    op: if d.create_time.as_deref().is_none_or(|c| c == d.update_time) {
                        "create".to_owned()
                    } else {
                        "update".to_owned()
                    },
                    update_time: d.update_time,
                    fields: d.fields,
                })
                .collect();
            Ok(ExportSource {
                path: path.to_owned(),
                project: file.project,
                changes,
            })
        }
    }
}

impl SourceReader for ExportSource {
    fn describe(&self) -> String {
        format!("export:{}", self.path.display())
    }
    fn project(&self) -> &str {
        &self.project
    }
    async fn documents(
        &self,
        module: Module,
        since: Option<DateTime<Utc>>,
    ) -> Result<SourceDocs, SourceError> {
        let mut out = SourceDocs::default();
        for c in &self.changes {
            let Some(family) = route(&c.path) else {
                out.unmappable.push(Unmappable {
                    path: c.path.clone(),
                    error: "not a mirrored collection".to_owned(),
                });
                continue;
            };
            if !in_module(module, family) {
                continue;
            }
            match c.to_event(&self.project) {
                Ok(e) if since.is_none_or(|s| e.time() >= s) => out.events.push(e),
                Ok(_) => {}
                Err(e) => out.unmappable.push(Unmappable {
                    path: c.path.clone(),
                    error: e.to_string(),
                }),
            }
        }
        Ok(out)
    }
}

/// Firestore (or anything else) through the publisher's [`DocumentPager`]
/// port and its mapping: the same reads and the same events as `publisher backfill`.
pub struct PagerSource<P> {
    pager: P,
    info: SourceInfo,
    page_size: u32,
}

impl<P: DocumentPager> PagerSource<P> {
    pub fn new(pager: P, info: SourceInfo) -> PagerSource<P> {
        PagerSource {
            pager,
            info,
            page_size: 500,
        }
    }
}

impl<P: DocumentPager> SourceReader for PagerSource<P> {
    fn describe(&self) -> String {
        format!(
            "firestore:projects/{}/databases/{}",
            self.info.project, self.info.database
        )
    }
    fn project(&self) -> &str {
        &self.info.project
    }
    async fn documents(
        &self,
        module: Module,
        since: Option<DateTime<Utc>>,
    ) -> Result<SourceDocs, SourceError> {
        let mut out = SourceDocs::default();
        let groups: &[Group] = match module {
            Module::Follow => &[Group::Targets],
            _ => &Group::ALL,
        };
        for &group in groups {
            let mut after = None;
            loop {
                let page = self
                    .pager
                    .page(PageRequest {
                        group,
                        // Groups without a time field are read whole (`__name__` order).
                        field: since.and(group.order_field()),
                        read_time: None,
                        since,
                        after: after.clone(),
                        limit: self.page_size,
                    })
                    .await
                    .map_err(|e| SourceError::Firestore(e.to_string()))?;
                let n = page.docs.len();
                for doc in &page.docs {
                    let Some(family) = route(&doc.path) else {
                        continue;
                    };
                    if !in_module(module, family) {
                        continue;
                    }
                    let op = if doc.create_time == doc.update_time {
                        UpsertOp::Create
                    } else {
                        UpsertOp::Update
                    };
                    match upsert_event(doc, op, &self.info) {
                        Ok(Some(e)) => out.events.push(e),
                        Ok(None) => {}
                        Err(e) => out.unmappable.push(Unmappable {
                            path: doc.path.clone(),
                            error: e.to_string(),
                        }),
                    }
                }
                match page.next {
                    Some(next) if n as u32 >= self.page_size => after = Some(next),
                    _ => break,
                }
            }
        }
        Ok(out)
    }
}

/// Documents held in memory (benches and tests).
#[derive(Debug, Clone)]
pub struct MemorySource {
    pub project: String,
    pub events: Vec<MirrorEvent>,
}

impl SourceReader for MemorySource {
    fn describe(&self) -> String {
        format!("memory:{} documents", self.events.len())
    }
    fn project(&self) -> &str {
        &self.project
    }
    async fn documents(
        &self,
        module: Module,
        since: Option<DateTime<Utc>>,
    ) -> Result<SourceDocs, SourceError> {
        Ok(SourceDocs {
            events: self
                .events
                .iter()
                .filter(|e| in_module(module, e.event_type().family()))
                .filter(|e| since.is_none_or(|s| e.time() >= s))
                .cloned()
                .collect(),
            unmappable: Vec::new(),
        })
    }
}
