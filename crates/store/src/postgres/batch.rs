//! A planned batch ([`crate::plan::Plan`]) as the parameters of one call of
//! `mirror.apply_batch` (`sql/postgres/V7__typed_apply_batch.sql`): the lock
//! names, the ledger rows, and one typed array per field of each family
//! (nullable fields as arrays with NULL elements), sent in binary, so the
//! server parses no JSON but the optional content it stores as `jsonb`.
//! Rust binds values; the SQL decides.

use chrono::{DateTime, Utc};
use mirror_schema::{EventType, Payload, Subject};
use serde_json::Value;
use tokio_postgres::types::{Json, ToSql};
use uuid::Uuid;

use crate::plan::{Plan, Planned};

/// Named arguments, so a reordering of the function's parameters cannot
/// silently shift them; `$n` is the `n`th of [`BatchParams::refs`].
pub(crate) const APPLY_BATCH: &str = "SELECT o_event_id, o_outcome FROM mirror.apply_batch(\
    p_locks => $1, p_ids => $2, p_types => $3, p_subjects => $4, p_times => $5, \
    p_conv_ids => $6, p_conv_times => $7, p_conv_cids => $8, p_conv_kinds => $9, p_conv_hashes => $10, \
    p_conv_created => $11, p_conv_updated => $12, p_conv_syncs => $13, p_conv_newest => $14, \
    p_conv_winners => $15, \
    p_part_ids => $16, p_part_cids => $17, p_part_users => $18, p_part_roles => $19, p_part_joined => $20, \
    p_part_mutes => $21, p_part_pointers => $22, \
    p_msg_ids => $23, p_msg_types => $24, p_msg_times => $25, p_msg_cids => $26, p_msg_mids => $27, \
    p_msg_dels => $28, p_msg_authors => $29, p_msg_bodies => $30, p_msg_attachments => $31, \
    p_msg_media => $32, p_msg_created => $33, p_msg_edited => $34, p_msg_deleted => $35, \
    p_msg_clients => $36, p_msg_performed_by => $37, p_msg_payloads => $38, p_msg_syncs => $39, \
    p_msg_newest => $40, p_msg_winners => $41, \
    p_blk_ids => $42, p_blk_times => $43, p_blk_uids => $44, p_blk_tids => $45, p_blk_created => $46, \
    p_blk_revoked => $47, p_blk_sources => $48, p_blk_syncs => $49, p_blk_newest => $50, \
    p_blk_winners => $51, \
    p_fol_ids => $52, p_fol_types => $53, p_fol_times => $54, p_fol_fids => $55, p_fol_tids => $56, \
    p_fol_states => $57, p_fol_sources => $58, p_fol_created => $59, p_fol_syncs => $60, \
    p_fol_newest => $61, p_fol_winners => $62)";

/// How many parameters [`APPLY_BATCH`] takes.
const PARAMS: usize = 62;

type Time = DateTime<Utc>;

/// The fields every family's row starts with.
#[derive(Default)]
struct Common<'a> {
    ids: Vec<Uuid>,
    times: Vec<Time>,
    syncs: Vec<&'a str>,
    newest: Vec<bool>,
    winners: Vec<bool>,
}

impl<'a> Common<'a> {
    fn push(&mut self, p: &Planned<'a>) {
        self.ids.push(p.event.id());
        self.times.push(p.event.time());
        self.syncs.push(p.event.sync_source());
        self.newest.push(p.newest_so_far);
        self.winners.push(p.winner);
    }
}

#[derive(Default)]
struct Conversations<'a> {
    common: Common<'a>,
    cids: Vec<&'a str>,
    kinds: Vec<&'static str>,
    hashes: Vec<String>,
    created: Vec<Time>,
    updated: Vec<Time>,
}

/// The participants of the winning conversation events, flattened: each
/// carries its event's id and conversation id (the key of the row it joins).
#[derive(Default)]
struct Participants<'a> {
    ids: Vec<Uuid>,
    cids: Vec<&'a str>,
    users: Vec<&'a str>,
    roles: Vec<&'static str>,
    joined: Vec<Time>,
    mutes: Vec<&'static str>,
    pointers: Vec<Option<&'a str>>,
}

#[derive(Default)]
struct Messages<'a> {
    common: Common<'a>,
    types: Vec<&'static str>,
    cids: Vec<&'a str>,
    mids: Vec<&'a str>,
    dels: Vec<bool>,
    authors: Vec<Option<&'a str>>,
    bodies: Vec<Option<&'a str>>,
    attachments: Vec<Option<Json<&'a [Value]>>>,
    media: Vec<Option<Json<&'a [Value]>>>,
    created: Vec<Option<Time>>,
    edited: Vec<Option<Time>>,
    deleted: Vec<Option<Time>>,
    clients: Vec<Option<&'a str>>,
    performed_by: Vec<Option<&'a str>>,
    payloads: Vec<Option<Value>>,
}

#[derive(Default)]
struct Blocks<'a> {
    common: Common<'a>,
    uids: Vec<&'a str>,
    tids: Vec<&'a str>,
    created: Vec<Option<Time>>,
    revoked: Vec<Option<Time>>,
    sources: Vec<Option<&'static str>>,
}

#[derive(Default)]
struct Follows<'a> {
    common: Common<'a>,
    types: Vec<&'static str>,
    fids: Vec<&'a str>,
    tids: Vec<&'a str>,
    states: Vec<Option<&'static str>>,
    sources: Vec<Option<&'static str>>,
    created: Vec<Option<Time>>,
}

/// The parameters of [`APPLY_BATCH`], borrowing from the plan's events.
pub(crate) struct BatchParams<'a> {
    locks: Vec<String>,
    ids: Vec<Uuid>,
    types: Vec<&'static str>,
    subjects: Vec<String>,
    times: Vec<Time>,
    conv: Conversations<'a>,
    part: Participants<'a>,
    msg: Messages<'a>,
    blk: Blocks<'a>,
    fol: Follows<'a>,
}

impl BatchParams<'_> {
    /// In the order of [`APPLY_BATCH`]'s `$n`.
    pub fn refs(&self) -> [&(dyn ToSql + Sync); PARAMS] {
        let (c, p, m, b, f) = (&self.conv, &self.part, &self.msg, &self.blk, &self.fol);
        [
            &self.locks,
            &self.ids,
            &self.types,
            &self.subjects,
            &self.times,
            // conversations
            &c.common.ids,
            &c.common.times,
            &c.cids,
            &c.kinds,
            &c.hashes,
            &c.created,
            &c.updated,
            &c.common.syncs,
            &c.common.newest,
            &c.common.winners,
            // participants
            &p.ids,
            &p.cids,
            &p.users,
            &p.roles,
            &p.joined,
            &p.mutes,
            &p.pointers,
            // messages
            &m.common.ids,
            &m.types,
            &m.common.times,
            &m.cids,
            &m.mids,
            &m.dels,
            &m.authors,
            &m.bodies,
            &m.attachments,
            &m.media,
            &m.created,
            &m.edited,
            &m.deleted,
            &m.clients,
            &m.performed_by,
            &m.payloads,
            &m.common.syncs,
            &m.common.newest,
            &m.common.winners,
            // blocks
            &b.common.ids,
            &b.common.times,
            &b.uids,
            &b.tids,
            &b.created,
            &b.revoked,
            &b.sources,
            &b.common.syncs,
            &b.common.newest,
            &b.common.winners,
            // follow edges
            &f.common.ids,
            &f.types,
            &f.common.times,
            &f.fids,
            &f.tids,
            &f.states,
            &f.sources,
            &f.created,
            &f.common.syncs,
            &f.common.newest,
            &f.common.winners,
        ]
    }
}

impl<'a> BatchParams<'a> {
    fn push(&mut self, p: &Planned<'a>) {
        let e = p.event;
        match (e.subject(), e.payload()) {
            (Subject::Conversation { conversation_id }, Payload::Conversation(c)) => {
                let conv = &mut self.conv;
                conv.common.push(p);
                conv.cids.push(conversation_id.as_str());
                conv.kinds.push(c.kind.as_str());
                conv.hashes.push(crate::state::participant_hash(
                    c.participants.iter().map(|x| x.user_id.as_str()),
                ));
                conv.created.push(c.created_at);
                conv.updated.push(c.updated_at);
                // Only a winner's participants can be written (see V7).
                if p.winner {
                    let part = &mut self.part;
                    for x in &c.participants {
                        part.ids.push(e.id());
                        part.cids.push(conversation_id.as_str());
                        part.users.push(&x.user_id);
                        part.roles.push(x.role.as_str());
                        part.joined.push(x.joined_at);
                        part.mutes.push(x.mute_state.as_str());
                        part.pointers.push(x.read_pointer_message_id.as_deref());
                    }
                }
            }
            (
                Subject::Message {
                    conversation_id,
                    message_id,
                },
                payload,
            ) => {
                let msg = &mut self.msg;
                msg.common.push(p);
                msg.types.push(e.event_type().as_str());
                msg.cids.push(conversation_id.as_str());
                msg.mids.push(message_id.as_str());
                // Only an update's or a delete's payload reaches the audit table.
                msg.payloads.push(
                    (e.event_type() != EventType::DmMessageCreate).then(|| payload.to_json()),
                );
                let (mut author, mut body, mut attachments, mut media) = (None, None, None, None);
                let (mut created, mut edited, mut deleted, mut client, mut performed_by) =
                    (None, None, None, None, None);
                match payload {
                    Payload::Message(m) => {
                        author = Some(m.author_user_id.as_str());
                        body = Some(m.body_text.as_str());
                        attachments = m.attachments.as_deref().map(Json);
                        media = m.external_media.as_deref().map(Json);
                        created = Some(m.created_at);
                        edited = m.edited_at;
                        deleted = m.deleted_at;
                        client = m.client_message_id.as_deref();
                    }
                    Payload::MessageDelete(d) => performed_by = d.performed_by.as_deref(),
                    _ => unreachable!("MirrorEvent guarantees the payload fits the subject"),
                }
                msg.dels.push(matches!(payload, Payload::MessageDelete(_)));
                msg.authors.push(author);
                msg.bodies.push(body);
                msg.attachments.push(attachments);
                msg.media.push(media);
                msg.created.push(created);
                msg.edited.push(edited);
                msg.deleted.push(deleted);
                msg.clients.push(client);
                msg.performed_by.push(performed_by);
            }
            (
                Subject::Block {
                    user_id,
                    target_user_id,
                },
                payload,
            ) => {
                let blk = &mut self.blk;
                blk.common.push(p);
                blk.uids.push(user_id.as_str());
                blk.tids.push(target_user_id.as_str());
                let b = match payload {
                    Payload::Block(b) => Some(b),
                    _ => None,
                };
                blk.created.push(b.map(|b| b.created_at));
                blk.revoked.push(b.and_then(|b| b.revoked_at));
                blk.sources.push(b.map(|b| b.source.as_str()));
            }
            (
                Subject::FollowEdge {
                    follower_user_id,
                    target_user_id,
                },
                payload,
            ) => {
                let fol = &mut self.fol;
                fol.common.push(p);
                fol.types.push(e.event_type().as_str());
                fol.fids.push(follower_user_id.as_str());
                fol.tids.push(target_user_id.as_str());
                let f = match payload {
                    Payload::FollowEdge(f) => Some(f),
                    _ => None,
                };
                fol.states.push(f.map(|f| f.state.as_str()));
                fol.sources.push(f.map(|f| f.source.as_str()));
                fol.created.push(f.map(|f| f.created_at));
            }
            _ => unreachable!("MirrorEvent guarantees the payload fits the subject"),
        }
    }
}

/// The parameters that apply `plan` in one call.
pub(crate) fn params<'a>(plan: &Plan<'a>) -> BatchParams<'a> {
    let n = plan.events.len();
    let mut out = BatchParams {
        locks: plan.locks.clone(),
        ids: Vec::with_capacity(n),
        types: Vec::with_capacity(n),
        subjects: Vec::with_capacity(n),
        times: Vec::with_capacity(n),
        conv: Conversations::default(),
        part: Participants::default(),
        msg: Messages::default(),
        blk: Blocks::default(),
        fol: Follows::default(),
    };
    for p in &plan.events {
        let e = p.event;
        out.ids.push(e.id());
        out.types.push(e.event_type().as_str());
        out.subjects.push(e.entity_key());
        out.times.push(e.time());
        out.push(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_parameter_is_bound_once_in_order() {
        for n in 1..=PARAMS {
            assert_eq!(
                APPLY_BATCH.matches(&format!("=> ${n},")).count()
                    + APPLY_BATCH.matches(&format!("=> ${n})")).count(),
                1,
                "${n}"
            );
        }
        assert!(!APPLY_BATCH.contains(&format!("${}", PARAMS + 1)));
    }

    /// `unnest(a, b, ...)` pads a shorter array with NULLs: every array of a
    /// family must have one element per row, whatever the event type.
    #[test]
    fn every_array_of_a_family_has_one_element_per_row() {
        let sample = include_str!("../../../../fixtures/events_sample.jsonl");
        let events: Vec<mirror_schema::MirrorEvent> = sample
            .lines()
            .map(|l| mirror_schema::decode_structured(l.as_bytes()).unwrap())
            .collect();
        let plan = Plan::new(&events);
        let b = params(&plan);
        let (c, p, m, k, f) = (&b.conv, &b.part, &b.msg, &b.blk, &b.fol);
        let n = events.len();
        assert_eq!(b.ids.len(), n);
        for len in [b.types.len(), b.subjects.len(), b.times.len()] {
            assert_eq!(len, n);
        }
        let common = |x: &Common<'_>| {
            let l = x.ids.len();
            for len in [
                x.times.len(),
                x.syncs.len(),
                x.newest.len(),
                x.winners.len(),
            ] {
                assert_eq!(len, l);
            }
            l
        };
        let nc = common(&c.common);
        for len in [
            c.cids.len(),
            c.kinds.len(),
            c.hashes.len(),
            c.created.len(),
            c.updated.len(),
        ] {
            assert_eq!(len, nc);
        }
        let np = p.ids.len();
        for len in [
            p.cids.len(),
            p.users.len(),
            p.roles.len(),
            p.joined.len(),
            p.mutes.len(),
            p.pointers.len(),
        ] {
            assert_eq!(len, np);
        }
        let nm = common(&m.common);
        for len in [
            m.types.len(),
            m.cids.len(),
            m.mids.len(),
            m.dels.len(),
            m.authors.len(),
            m.bodies.len(),
            m.attachments.len(),
            m.media.len(),
            m.created.len(),
            m.edited.len(),
            m.deleted.len(),
            m.clients.len(),
            m.performed_by.len(),
            m.payloads.len(),
        ] {
            assert_eq!(len, nm);
        }
        let nk = common(&k.common);
        for len in [
            k.uids.len(),
            k.tids.len(),
            k.created.len(),
            k.revoked.len(),
            k.sources.len(),
        ] {
            assert_eq!(len, nk);
        }
        let nf = common(&f.common);
        for len in [
            f.types.len(),
            f.fids.len(),
            f.tids.len(),
            f.states.len(),
            f.sources.len(),
            f.created.len(),
        ] {
            assert_eq!(len, nf);
        }
        // Every family is present in the sample, and every event is in one.
        assert!(nc > 0 && np > 0 && nm > 0 && nk > 0 && nf > 0);
        assert_eq!(nc + nm + nk + nf, n);
        // Deletes carry NULL content; a create carries no audit payload.
        assert!(m
            .dels
            .iter()
            .zip(&m.authors)
            .all(|(d, a)| *d == a.is_none()));
        assert!(k.sources.iter().any(Option::is_none));
        assert!(f.states.iter().any(Option::is_none));
        assert!(m
            .types
            .iter()
            .zip(&m.payloads)
            .all(|(t, p)| (*t == "dm.message.create") == p.is_none()));
    }

    #[test]
    fn the_named_arguments_are_the_functions_parameters() {
        let sql = include_str!("../../../../sql/postgres/V7__typed_apply_batch.sql");
        let names: Vec<&str> = APPLY_BATCH
            .split(" => ")
            .filter_map(|s| s.rsplit(['(', ' ']).next())
            .filter(|s| s.starts_with("p_"))
            .collect();
        assert_eq!(names.len(), PARAMS);
        for name in names {
            assert!(
                sql.lines()
                    .any(|l| l.trim_start().starts_with(&format!("{name} "))),
                "{name} is not a parameter of V7's mirror.apply_batch"
            );
        }
    }
}
