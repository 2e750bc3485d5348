//! The bindings and service accounts as admission and status need them, and nothing else.
//!
//! A cluster can hold 100,000 bindings, so the store keeps per binding a few dozen bytes: the
//! strings of its spec packed into one allocation, its generation, and what the API server holds
//! as its status reduced to a fingerprint and the two fields the next status carries over
//! (the Ready condition's value and `lastTransitionTime`). No `managedFields`, no annotations,
//! no object copies. Namespace names are interned. [`crate::domain::binding::Binding`] values are built
//! on demand: for an admission (only for a pod whose service account has bindings), or for
//! the status of one service account's bindings.
//!
//! Per namespace, bindings sit in one vector sorted by (service account, name), so the bindings
//! of a service account are one contiguous, name-sorted run (the order admissions need to be
//! deterministic across replicas), and service accounts in another, sorted by name.

use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};

use crate::domain::binding::{Binding, Hop, TokenSource};
use crate::domain::crd::AWSRoleBindingStatus;
use crate::domain::status::{READY, ServiceAccountState};

/// What the API server holds as a binding's status, in 16 bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Seen {
    /// [`fingerprint`] of the whole status; 0 when there is none.
    pub fingerprint: u64,
    /// The Ready condition's `lastTransitionTime` in Unix seconds (0 if none or unreadable:
    /// the next status then starts a new transition, once).
    pub transition: u32,
    /// The Ready condition's `status`: 0 absent, 1 True, 2 False, 3 Unknown.
    pub ready: u8,
}

/// A stable hash of a status as the webhook would write it.
pub(crate) fn fingerprint(status: &AWSRoleBindingStatus) -> u64 {
    let json = serde_json::to_vec(status).expect("a status serialises");
    // DefaultHasher::new() uses fixed keys: stable within the process, which is all we need.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    json.hash(&mut h);
    h.finish() | 1
}

impl Seen {
    pub(crate) fn of(status: Option<&AWSRoleBindingStatus>) -> Seen {
        let Some(status) = status else {
            return Seen::default();
        };
        let ready = status.conditions.iter().find(|c| c.type_ == READY);
        Seen {
            fingerprint: fingerprint(status),
            ready: match ready.map(|c| c.status.as_str()) {
                None => 0,
                Some("True") => 1,
                Some("False") => 2,
                Some(_) => 3,
            },
            transition: ready
                .and_then(|c| {
                    c.last_transition_time
                        .parse::<k8s_openapi::jiff::Timestamp>()
                        .ok()
                })
                .and_then(|t| u32::try_from(t.as_second()).ok())
                .unwrap_or(0),
        }
    }

    /// The part of the current status that the next one carries over, as `status::desired`
    /// reads it.
    pub(crate) fn as_status(&self) -> Option<AWSRoleBindingStatus> {
        let status = match self.ready {
            0 => return None,
            1 => "True",
            2 => "False",
            _ => "Unknown",
        };
        let time = k8s_openapi::jiff::Timestamp::from_second(i64::from(self.transition))
            .map(|t| t.to_string())
            .unwrap_or_default();
        Some(AWSRoleBindingStatus {
            conditions: vec![crate::domain::crd::Condition {
                type_: READY.into(),
                status: status.into(),
                reason: String::new(),
                message: String::new(),
                last_transition_time: time,
                observed_generation: None,
            }],
            ..AWSRoleBindingStatus::default()
        })
    }
}

/// Field flags of a packed binding.
const AUDIENCE: u8 = 1;
const REGION: u8 = 2;
const CONTAINERS: u8 = 4;
const SESSION_TAGS: u8 = 8;
/// `tokenSource: Kubernetes` (absent: Google).
const KUBERNETES: u8 = 16;

/// One binding: its strings concatenated in `text`, their lengths in `lens` (the first four
/// inline, any further ones in `more`), in this order: service account, name, role,
/// \[audience\], \[region\], \[containers…\], \[hop role, hop external id…\].
#[derive(Debug, Clone)]
struct Entry {
    text: Box<str>,
    lens: [u16; 4],
    more: Option<Box<[u16]>>,
    fields: u8,
    flags: u8,
    containers: u8,
    hops: u8,
    /// Bit i: hop i has an external ID.
    external_ids: u8,
    duration: Option<std::num::NonZeroU32>,
    generation: i64,
    seen: Seen,
    conflict: bool,
    /// Relist in which the entry was last seen (see [`Store::begin_relist`]).
    epoch: u32,
}

/// Splits packed strings.
struct Fields<'a> {
    text: &'a str,
    lens: std::iter::Take<std::iter::Chain<std::slice::Iter<'a, u16>, std::slice::Iter<'a, u16>>>,
}

impl<'a> Iterator for Fields<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        let n = usize::from(*self.lens.next()?);
        let (head, rest) = self.text.split_at(n);
        self.text = rest;
        Some(head)
    }
}

impl Entry {
    fn pack(b: &Binding, generation: i64, seen: Seen, epoch: u32) -> Entry {
        let mut parts: Vec<&str> = vec![&b.service_account, &b.name, &b.role_arn];
        let mut flags = 0;
        if let Some(a) = &b.audience {
            flags |= AUDIENCE;
            parts.push(a);
        }
        if let Some(r) = &b.region {
            flags |= REGION;
            parts.push(r);
        }
        let mut containers = 0;
        if let Some(cs) = &b.containers {
            flags |= CONTAINERS;
            containers = cs.len().min(255) as u8;
            parts.extend(cs.iter().take(255).map(String::as_str));
        }
        if b.session_tags {
            flags |= SESSION_TAGS;
        }
        if b.token_source == TokenSource::Kubernetes {
            flags |= KUBERNETES;
        }
        let mut external_ids = 0;
        let hops = b.chain.len().min(8);
        for (i, hop) in b.chain.iter().take(8).enumerate() {
            parts.push(&hop.role_arn);
            if let Some(id) = &hop.external_id {
                external_ids |= 1 << i;
                parts.push(id);
            }
        }
        // Kubernetes names and ARNs are far below 64 KiB; a longer field is cut, never wrapped.
        let all: Vec<u16> = parts
            .iter()
            .map(|p| floor_char_boundary(p, u16::MAX as usize) as u16)
            .collect();
        let mut lens = [0; 4];
        let inline = all.len().min(4);
        lens[..inline].copy_from_slice(&all[..inline]);
        Entry {
            lens,
            more: (all.len() > 4).then(|| all[4..].into()),
            fields: all.len().min(255) as u8,
            text: parts
                .iter()
                .map(|p| &p[..floor_char_boundary(p, u16::MAX as usize)])
                .collect::<String>()
                .into_boxed_str(),
            flags,
            containers,
            hops: hops as u8,
            external_ids,
            duration: b.duration_seconds.and_then(std::num::NonZeroU32::new),
            generation,
            seen,
            conflict: false,
            epoch,
        }
    }

    fn fields(&self) -> Fields<'_> {
        let more: &[u16] = self.more.as_deref().unwrap_or_default();
        Fields {
            text: &self.text,
            lens: self
                .lens
                .iter()
                .chain(more.iter())
                .take(usize::from(self.fields)),
        }
    }

    fn service_account(&self) -> &str {
        self.fields().next().unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.fields().nth(1).unwrap_or_default()
    }

    fn unpack(&self) -> Binding {
        let mut f = self.fields();
        let mut next = || f.next().unwrap_or_default().to_owned();
        let service_account = next();
        let name = next();
        let role_arn = next();
        let audience = (self.flags & AUDIENCE != 0).then(&mut next);
        let region = (self.flags & REGION != 0).then(&mut next);
        let containers =
            (self.flags & CONTAINERS != 0).then(|| (0..self.containers).map(|_| next()).collect());
        let chain = (0..self.hops)
            .map(|i| Hop {
                role_arn: next(),
                external_id: (self.external_ids & (1 << i) != 0).then(&mut next),
            })
            .collect();
        Binding {
            name,
            service_account,
            role_arn,
            audience,
            region,
            containers,
            chain,
            duration_seconds: self.duration.map(std::num::NonZeroU32::get),
            session_tags: self.flags & SESSION_TAGS != 0,
            token_source: if self.flags & KUBERNETES != 0 {
                TokenSource::Kubernetes
            } else {
                TokenSource::Google
            },
        }
    }

    fn key(&self) -> (&str, &str) {
        let mut f = self.fields();
        (f.next().unwrap_or_default(), f.next().unwrap_or_default())
    }
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

/// A binding whose spec is unusable, with why.
#[derive(Debug, Clone)]
struct Invalid {
    name: Box<str>,
    reason: Box<str>,
    generation: i64,
    seen: Seen,
    epoch: u32,
}

/// Google service accounts end in this; stored without it.
const GSA_SUFFIX: &str = ".iam.gserviceaccount.com";

/// A service account: its name and its Workload Identity annotation, packed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Account {
    text: Box<str>,
    name_len: u16,
    /// 0: no annotation; 1: annotation as is; 2: annotation without [`GSA_SUFFIX`].
    gsa: u8,
    epoch: u32,
}

impl Account {
    fn new(name: &str, gsa: Option<&str>, epoch: u32) -> Account {
        let name = &name[..floor_char_boundary(name, u16::MAX as usize)];
        let (kind, rest) = match gsa {
            None => (0, ""),
            Some(g) => match g.strip_suffix(GSA_SUFFIX) {
                Some(short) => (2, short),
                None => (1, g),
            },
        };
        Account {
            text: format!("{name}{rest}").into_boxed_str(),
            name_len: name.len() as u16,
            gsa: kind,
            epoch,
        }
    }

    fn name(&self) -> &str {
        &self.text[..usize::from(self.name_len)]
    }

    fn state(&self) -> ServiceAccountState {
        let rest = &self.text[usize::from(self.name_len)..];
        match self.gsa {
            1 if !rest.is_empty() => ServiceAccountState::WorkloadIdentity(rest.to_owned()),
            2 => ServiceAccountState::WorkloadIdentity([rest, GSA_SUFFIX].concat()),
            _ => ServiceAccountState::NoWorkloadIdentity,
        }
    }
}

#[derive(Debug, Default)]
struct Namespace {
    /// Sorted by (service account, name).
    bindings: Vec<Entry>,
    /// Hashes of the names in `bindings`: a new binding needs no scan for an old copy.
    names: HashSet<u64>,
    invalid: Vec<Invalid>,
    /// Sorted by name.
    accounts: Vec<Account>,
}

fn name_hash(name: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

impl Namespace {
    fn group(&self, sa: &str) -> &[Entry] {
        let start = self.bindings.partition_point(|e| e.service_account() < sa);
        let len = self.bindings[start..].partition_point(|e| e.service_account() == sa);
        &self.bindings[start..start + len]
    }

    fn group_mut(&mut self, sa: &str) -> &mut [Entry] {
        let start = self.bindings.partition_point(|e| e.service_account() < sa);
        let len = self.bindings[start..].partition_point(|e| e.service_account() == sa);
        &mut self.bindings[start..start + len]
    }

    /// Removes the binding `name` wherever it is; returns its service account if it was valid.
    fn remove(&mut self, name: &str, likely_sa: Option<&str>) -> Option<Removed> {
        if let Some(i) = self.invalid.iter().position(|e| &*e.name == name) {
            self.invalid.remove(i);
            return Some(Removed::Invalid);
        }
        if !self.names.contains(&name_hash(name)) {
            return None;
        }
        let at = likely_sa
            .and_then(|sa| {
                self.bindings
                    .binary_search_by(|e| e.key().cmp(&(sa, name)))
                    .ok()
            })
            .or_else(|| self.bindings.iter().position(|e| e.name() == name))?;
        self.names.remove(&name_hash(name));
        let e = self.bindings.remove(at);
        Some(Removed::Valid(e.service_account().to_owned()))
    }

    fn account(&self, name: &str) -> Option<&Account> {
        self.accounts
            .binary_search_by(|a| a.name().cmp(name))
            .ok()
            .map(|i| &self.accounts[i])
    }
}

enum Removed {
    Valid(String),
    Invalid,
}

/// Where a full pass over the store stands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum Pass {
    #[default]
    Start,
    /// Continue in this namespace after this service account.
    At(Arc<str>, Option<String>),
    Done,
}

/// A set of bindings whose status must be computed together: one service account's bindings
/// (conflicts are decided among them), or one invalid binding.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    Account {
        namespace: Arc<str>,
        service_account: String,
    },
    Invalid {
        namespace: Arc<str>,
        name: String,
    },
}

/// One binding of a group, ready for `status::desired`.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub name: String,
    pub generation: i64,
    pub spec: Result<Binding, String>,
    pub seen: Seen,
}

/// Everything a group's status depends on.
#[derive(Debug, Clone)]
pub(crate) struct GroupState {
    pub namespace: Arc<str>,
    pub members: Vec<Member>,
    pub account: ServiceAccountState,
}

#[derive(Debug, Default)]
struct Inner {
    /// Ordered, so a full pass can walk it with a cursor.
    namespaces: BTreeMap<Arc<str>, Namespace>,
    valid: usize,
    invalid: usize,
    conflicts: usize,
    binding_epoch: u32,
    account_epoch: u32,
}

impl Inner {
    fn ns(&mut self, namespace: &str) -> (Arc<str>, &mut Namespace) {
        // Interned: one allocation per namespace, shared by every group key.
        let key = match self.namespaces.get_key_value(namespace) {
            Some((k, _)) => k.clone(),
            None => Arc::from(namespace),
        };
        let ns = self.namespaces.entry(key.clone()).or_default();
        (key, ns)
    }
}

/// The store. Reads (admissions) take a shared lock for a binary search; writes (watch events)
/// an exclusive one for an insertion into one namespace's vector.
#[derive(Debug, Default)]
pub struct Store {
    inner: RwLock<Inner>,
    recent: Recent,
}

/// How many groups [`Recent`] keeps.
const RECENT_GROUPS: usize = 32;

/// The groups admissions asked for last, unpacked. Pods come in bursts of one workload, and
/// unpacking a group (a few allocations per binding) was a tenth of an admission's own work.
/// Filled under the store's read lock and emptied under its write lock, so an entry never
/// outlives the state it was unpacked from.
#[derive(Debug, Default)]
struct Recent(std::sync::Mutex<Vec<RecentGroup>>);

#[derive(Debug)]
struct RecentGroup {
    namespace: String,
    service_account: String,
    bindings: Arc<[Binding]>,
}

impl Recent {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<RecentGroup>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, namespace: &str, service_account: &str) -> Option<Arc<[Binding]>> {
        self.lock()
            .iter()
            .find(|g| g.service_account == service_account && g.namespace == namespace)
            .map(|g| g.bindings.clone())
    }

    fn put(&self, namespace: &str, service_account: &str, bindings: Arc<[Binding]>) {
        let mut kept = self.lock();
        if kept.len() == RECENT_GROUPS {
            kept.remove(0);
        }
        kept.push(RecentGroup {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            bindings,
        });
    }

    fn clear(&self) {
        self.lock().clear();
    }
}

/// A binding as read from the API.
pub struct Observed<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub generation: i64,
    pub spec: Result<Binding, String>,
    pub status: Option<&'a AWSRoleBindingStatus>,
}

/// Counts for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub valid: usize,
    pub invalid: usize,
    pub conflicts: usize,
}

/// A store holding these (namespace, binding) pairs and nothing else: a bindings file,
/// `inject`'s bindings, one live read, a test's bindings.
impl FromIterator<(String, Binding)> for Store {
    fn from_iter<I: IntoIterator<Item = (String, Binding)>>(bindings: I) -> Self {
        let store = Store::new();
        for (namespace, b) in bindings {
            let name = b.name.clone();
            store.apply(Observed {
                namespace: &namespace,
                name: &name,
                generation: 0,
                spec: Ok(b),
                status: None,
            });
        }
        store
    }
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Every change goes through here, so this is where [`Recent`] is emptied.
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        let inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        self.recent.clear();
        inner
    }

    pub fn counts(&self) -> Counts {
        let inner = self.read();
        Counts {
            valid: inner.valid,
            invalid: inner.invalid,
            conflicts: inner.conflicts,
        }
    }

    /// The bindings of `service_account` in `namespace`, sorted by name so that every replica
    /// produces the same patch for the same pod. The one lookup of a pod's bindings: admissions
    /// (`serve`, from the watched store or a live read), `inject` and the tests all ask this.
    pub fn bindings_for(&self, namespace: &str, service_account: &str) -> Option<Arc<[Binding]>> {
        let inner = self.read();
        if let Some(known) = self.recent.get(namespace, service_account) {
            return Some(known);
        }
        let group = inner.namespaces.get(namespace)?.group(service_account);
        if group.is_empty() {
            return None;
        }
        let bindings: Arc<[Binding]> = group.iter().map(Entry::unpack).collect();
        // Still under the read lock: no change can come between the unpacking and this.
        self.recent
            .put(namespace, service_account, bindings.clone());
        drop(inner);
        Some(bindings)
    }

    /// What the store knows of a service account: its Workload Identity annotation, or
    /// `Missing` when it holds none by that name (not watched yet, or no such account).
    pub fn service_account(&self, namespace: &str, name: &str) -> ServiceAccountState {
        let inner = self.read();
        inner
            .namespaces
            .get(namespace)
            .and_then(|ns| ns.account(name))
            .map_or(ServiceAccountState::Missing, Account::state)
    }

    /// Adds or replaces a binding; returns the groups whose status may have changed.
    pub fn apply(&self, b: Observed<'_>) -> Vec<Group> {
        let mut inner = self.write();
        let epoch = inner.binding_epoch;
        let (namespace, ns) = inner.ns(b.namespace);
        let likely = b.spec.as_ref().ok().map(|s| s.service_account.as_str());
        let removed = ns.remove(b.name, likely);
        let seen = Seen::of(b.status);
        let mut groups = Vec::with_capacity(2);
        let (was_valid, was_invalid) = match &removed {
            Some(Removed::Valid(sa)) => {
                groups.push(Group::Account {
                    namespace: namespace.clone(),
                    service_account: sa.clone(),
                });
                (1, 0)
            }
            Some(Removed::Invalid) => (0, 1),
            None => (0, 0),
        };
        let (now_valid, now_invalid) = match b.spec {
            Ok(binding) => {
                let entry = Entry::pack(&binding, b.generation, seen, epoch);
                let at = ns
                    .bindings
                    .partition_point(|e| e.key() < (binding.service_account.as_str(), b.name));
                ns.bindings.insert(at, entry);
                ns.names.insert(name_hash(b.name));
                let g = Group::Account {
                    namespace: namespace.clone(),
                    service_account: binding.service_account,
                };
                if !groups.contains(&g) {
                    groups.push(g);
                }
                (1, 0)
            }
            Err(reason) => {
                let at = ns.invalid.partition_point(|e| &*e.name < b.name);
                ns.invalid.insert(
                    at,
                    Invalid {
                        name: b.name.into(),
                        reason: reason.into(),
                        generation: b.generation,
                        seen,
                        epoch,
                    },
                );
                groups.push(Group::Invalid {
                    namespace: namespace.clone(),
                    name: b.name.to_owned(),
                });
                (0, 1)
            }
        };
        inner.valid = inner.valid + now_valid - was_valid;
        inner.invalid = inner.invalid + now_invalid - was_invalid;
        groups
    }

    /// Removes a binding; returns the group it leaves.
    pub(crate) fn delete(
        &self,
        namespace: &str,
        name: &str,
        service_account: Option<&str>,
    ) -> Vec<Group> {
        let mut inner = self.write();
        let Some((key, ns)) = inner.namespaces.get_key_value_mut_compat(namespace) else {
            return Vec::new();
        };
        let removed = ns.remove(name, service_account);
        match removed {
            Some(Removed::Valid(sa)) => {
                inner.valid -= 1;
                vec![Group::Account {
                    namespace: key,
                    service_account: sa,
                }]
            }
            Some(Removed::Invalid) => {
                inner.invalid -= 1;
                Vec::new()
            }
            None => Vec::new(),
        }
    }

    /// Records a service account (`gsa`: its Workload Identity annotation); returns its group.
    pub fn apply_account(&self, namespace: &str, name: &str, gsa: Option<&str>) -> Vec<Group> {
        let mut inner = self.write();
        let epoch = inner.account_epoch;
        let (key, ns) = inner.ns(namespace);
        let account = Account::new(name, gsa, epoch);
        let changed = match ns
            .accounts
            .binary_search_by(|a| a.name().cmp(account.name()))
        {
            Ok(i) => {
                let same = ns.accounts[i].text == account.text && ns.accounts[i].gsa == account.gsa;
                ns.accounts[i] = account;
                !same
            }
            Err(i) => {
                ns.accounts.insert(i, account);
                true
            }
        };
        let bound = !ns.group(name).is_empty();
        if changed && bound {
            vec![Group::Account {
                namespace: key,
                service_account: name.to_owned(),
            }]
        } else {
            Vec::new()
        }
    }

    pub(crate) fn delete_account(&self, namespace: &str, name: &str) -> Vec<Group> {
        let mut inner = self.write();
        let Some((key, ns)) = inner.namespaces.get_key_value_mut_compat(namespace) else {
            return Vec::new();
        };
        let Ok(i) = ns.accounts.binary_search_by(|a| a.name().cmp(name)) else {
            return Vec::new();
        };
        ns.accounts.remove(i);
        if ns.group(name).is_empty() {
            Vec::new()
        } else {
            vec![Group::Account {
                namespace: key,
                service_account: name.to_owned(),
            }]
        }
    }

    /// A relist of the bindings starts: entries not seen again before [`Store::end_relist`]
    /// were deleted while the watch was away.
    pub fn begin_relist(&self) {
        let mut inner = self.write();
        inner.binding_epoch = inner.binding_epoch.wrapping_add(1);
    }

    /// Drops the bindings the relist did not see; returns their groups.
    pub fn end_relist(&self) -> Vec<Group> {
        let mut inner = self.write();
        let epoch = inner.binding_epoch;
        let mut groups = Vec::new();
        let (mut valid, mut invalid) = (0, 0);
        for (key, ns) in &mut inner.namespaces {
            let before = ns.bindings.len();
            let mut gone = Vec::new();
            ns.bindings.retain(|e| {
                let keep = e.epoch == epoch;
                if !keep {
                    gone.push((e.service_account().to_owned(), e.name().to_owned()));
                }
                keep
            });
            for (sa, name) in gone {
                ns.names.remove(&name_hash(&name));
                let g = Group::Account {
                    namespace: key.clone(),
                    service_account: sa,
                };
                if !groups.contains(&g) {
                    groups.push(g);
                }
            }
            ns.invalid.retain(|e| e.epoch == epoch);
            ns.bindings.shrink_to_fit();
            ns.invalid.shrink_to_fit();
            let _ = before;
            valid += ns.bindings.len();
            invalid += ns.invalid.len();
        }
        inner.valid = valid;
        inner.invalid = invalid;
        groups
    }

    /// As [`Store::begin_relist`], for service accounts.
    pub(crate) fn begin_accounts_relist(&self) {
        let mut inner = self.write();
        inner.account_epoch = inner.account_epoch.wrapping_add(1);
    }

    pub(crate) fn end_accounts_relist(&self) -> Vec<Group> {
        let mut inner = self.write();
        let epoch = inner.account_epoch;
        let mut groups = Vec::new();
        for (key, ns) in &mut inner.namespaces {
            let mut gone = Vec::new();
            ns.accounts.retain(|a| {
                let keep = a.epoch == epoch;
                if !keep {
                    gone.push(a.name().to_owned());
                }
                keep
            });
            ns.accounts.shrink_to_fit();
            for name in gone {
                if !ns.group(&name).is_empty() {
                    groups.push(Group::Account {
                        namespace: key.clone(),
                        service_account: name,
                    });
                }
            }
        }
        groups
    }

    /// The next at most `limit` groups of a full pass (a new leader, a relist), or `None`
    /// when the pass is complete. Walking with a cursor keeps a pass over 100,000 bindings
    /// from materialising 100,000 keys; groups changed meanwhile are marked anyway.
    pub(crate) fn pass_chunk(&self, pass: &mut Pass, limit: usize) -> Option<Vec<Group>> {
        let inner = self.read();
        let mut out = Vec::new();
        let (from, after) = match std::mem::replace(pass, Pass::Done) {
            Pass::Done => return None,
            Pass::Start => (None, None),
            Pass::At(ns, after) => (Some(ns), after),
        };
        let range = match &from {
            Some(ns) => inner
                .namespaces
                .range::<str, _>((std::ops::Bound::Included(&**ns), std::ops::Bound::Unbounded)),
            None => inner.namespaces.range::<str, _>(..),
        };
        for (key, ns) in range {
            // Resume after the cursor's service account, in the cursor's namespace only.
            let start = match (&from, &after) {
                (Some(f), Some(sa)) if f == key => ns
                    .bindings
                    .partition_point(|e| e.service_account() <= sa.as_str()),
                _ => 0,
            };
            let mut last: Option<&str> = None;
            for e in &ns.bindings[start..] {
                let sa = e.service_account();
                if last == Some(sa) {
                    continue;
                }
                if out.len() >= limit {
                    *pass = Pass::At(key.clone(), last.map(str::to_owned));
                    return Some(out);
                }
                out.push(Group::Account {
                    namespace: key.clone(),
                    service_account: sa.to_owned(),
                });
                last = Some(sa);
            }
            // Invalid bindings are few: they close their namespace's part of the pass.
            out.extend(ns.invalid.iter().map(|e| Group::Invalid {
                namespace: key.clone(),
                name: e.name.to_string(),
            }));
        }
        Some(out)
    }

    /// What a group's status depends on; `None` if it has no bindings any more.
    pub(crate) fn group(&self, group: &Group) -> Option<GroupState> {
        let inner = self.read();
        match group {
            Group::Account {
                namespace,
                service_account,
            } => {
                let ns = inner.namespaces.get(&**namespace)?;
                let members: Vec<Member> = ns
                    .group(service_account)
                    .iter()
                    .map(|e| Member {
                        name: e.name().to_owned(),
                        generation: e.generation,
                        spec: Ok(e.unpack()),
                        seen: e.seen,
                    })
                    .collect();
                if members.is_empty() {
                    return None;
                }
                let account = ns
                    .account(service_account)
                    .map_or(ServiceAccountState::Missing, Account::state);
                Some(GroupState {
                    namespace: namespace.clone(),
                    members,
                    account,
                })
            }
            Group::Invalid { namespace, name } => {
                let ns = inner.namespaces.get(&**namespace)?;
                let e = ns.invalid.iter().find(|e| &*e.name == name)?;
                Some(GroupState {
                    namespace: namespace.clone(),
                    members: vec![Member {
                        name: name.clone(),
                        generation: e.generation,
                        spec: Err(e.reason.to_string()),
                        seen: e.seen,
                    }],
                    account: ServiceAccountState::Missing,
                })
            }
        }
    }

    /// Records whether `name` is in conflict and, after a write of ours, what the API server
    /// now holds as its status (so the next computation compares against it at once, before
    /// the watch event arrives).
    pub(crate) fn record_status(
        &self,
        namespace: &str,
        name: &str,
        service_account: Option<&str>,
        seen: Option<Seen>,
        conflict: bool,
    ) {
        let mut inner = self.write();
        let Some(ns) = inner.namespaces.get_mut(namespace) else {
            return;
        };
        let mut delta: isize = 0;
        match service_account {
            Some(sa) => {
                if let Some(e) = ns.group_mut(sa).iter_mut().find(|e| e.name() == name) {
                    if let Some(seen) = seen {
                        e.seen = seen;
                    }
                    delta = isize::from(conflict) - isize::from(e.conflict);
                    e.conflict = conflict;
                }
            }
            None => {
                if let (Some(e), Some(seen)) =
                    (ns.invalid.iter_mut().find(|e| &*e.name == name), seen)
                {
                    e.seen = seen;
                }
            }
        }
        inner.conflicts = inner.conflicts.saturating_add_signed(delta);
    }
}

/// `get_key_value` + mutable value, for an interned key.
trait KeyValueMut {
    fn get_key_value_mut_compat(&mut self, k: &str) -> Option<(Arc<str>, &mut Namespace)>;
}

impl KeyValueMut for BTreeMap<Arc<str>, Namespace> {
    fn get_key_value_mut_compat(&mut self, k: &str) -> Option<(Arc<str>, &mut Namespace)> {
        let key = self.get_key_value(k)?.0.clone();
        let ns = self.get_mut(k)?;
        Some((key, ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(name: &str, sa: &str) -> Binding {
        Binding {
            name: name.into(),
            service_account: sa.into(),
            role_arn: format!("arn:aws:iam::123456789012:role/{name}"),
            ..Binding::default()
        }
    }

    /// Every group, in order.
    fn all_groups(store: &Store) -> Vec<Group> {
        let mut pass = Pass::Start;
        let mut out = Vec::new();
        while let Some(chunk) = store.pass_chunk(&mut pass, usize::MAX) {
            out.extend(chunk);
        }
        out
    }

    /// The names `bindings_for` gives, in its order.
    fn names(store: &Store, ns: &str, sa: &str) -> Vec<String> {
        let found = store.bindings_for(ns, sa).unwrap();
        found.iter().map(|b| b.name.clone()).collect()
    }

    fn observed<'a>(ns: &'a str, b: &'a Binding) -> Observed<'a> {
        Observed {
            namespace: ns,
            name: &b.name,
            generation: 1,
            spec: Ok(b.clone()),
            status: None,
        }
    }

    #[test]
    fn collected_bindings_are_grouped_and_sorted() {
        let store: Store = [
            ("ns".to_string(), binding("z", "sa")),
            ("ns".to_string(), binding("a", "sa")),
            ("other".to_string(), binding("c", "sa")),
        ]
        .into_iter()
        .collect();
        assert_eq!(names(&store, "ns", "sa"), ["a", "z"]);
        assert!(store.bindings_for("ns", "other").is_none());
        assert!(store.bindings_for("nope", "sa").is_none());
        assert_eq!(store.counts().valid, 3);
    }

    #[test]
    fn every_change_shows_in_the_next_lookup_however_recently_it_was_read() {
        let store = Store::new();
        let first = binding("b", "sa");
        store.apply(observed("ns", &first));
        assert_eq!(store.bindings_for("ns", "sa").unwrap()[0], first);
        let changed = Binding {
            region: Some("eu-west-1".into()),
            ..first.clone()
        };
        store.apply(observed("ns", &changed));
        assert_eq!(store.bindings_for("ns", "sa").unwrap()[0], changed);
        // More groups than are kept unpacked, read twice: each still gives its own bindings.
        let many: Vec<Binding> = (0..RECENT_GROUPS + 3)
            .map(|i| binding(&format!("b{i}"), &format!("sa{i}")))
            .collect();
        for b in &many {
            store.apply(observed("ns", b));
        }
        for _ in 0..2 {
            for b in &many {
                assert_eq!(
                    *store.bindings_for("ns", &b.service_account).unwrap(),
                    *std::slice::from_ref(b)
                );
            }
        }
        store.delete("ns", "b", Some("sa"));
        assert!(store.bindings_for("ns", "sa").is_none());
        store.apply_account("ns", "sa", Some("gsa@p.iam.gserviceaccount.com"));
        assert!(store.bindings_for("other", "sa0").is_none());
    }

    #[test]
    fn packing_round_trips_every_field() {
        let full = Binding {
            name: "b".into(),
            service_account: "sa".into(),
            role_arn: "arn:aws:iam::123456789012:role/id".into(),
            audience: Some("aud".into()),
            region: Some("eu-west-1".into()),
            containers: Some(vec!["app".into(), "".into(), "side".into()]),
            chain: vec![
                Hop {
                    role_arn: "arn:aws:iam::210987654321:role/a".into(),
                    external_id: Some("ext".into()),
                },
                Hop {
                    role_arn: "arn:aws:iam::210987654321:role/b".into(),
                    external_id: None,
                },
            ],
            duration_seconds: Some(900),
            session_tags: true,
            token_source: TokenSource::Kubernetes,
        };
        for b in [full, binding("plain", "sa"), Binding::default()] {
            assert_eq!(Entry::pack(&b, 1, Seen::default(), 0).unpack(), b);
        }
    }

    #[test]
    fn groups_are_sorted_runs_and_moves_leave_the_old_group() {
        let store = Store::new();
        for (name, sa) in [("z", "app"), ("a", "app"), ("m", "other")] {
            let b = binding(name, sa);
            store.apply(observed("ns", &b));
        }
        assert_eq!(names(&store, "ns", "app"), ["a", "z"]);
        // z moves to service account "other": both groups need their status recomputed.
        let moved = binding("z", "other");
        let groups = store.apply(observed("ns", &moved));
        assert_eq!(groups.len(), 2);
        assert_eq!(store.bindings_for("ns", "app").unwrap().len(), 1);
        assert_eq!(store.bindings_for("ns", "other").unwrap().len(), 2);
        assert_eq!(store.counts().valid, 3);
        store.delete("ns", "a", Some("app"));
        assert!(store.bindings_for("ns", "app").is_none());
        assert_eq!(store.counts().valid, 2);
    }

    #[test]
    fn invalid_specs_and_accounts() {
        let store = Store::new();
        let b = binding("b", "app");
        store.apply(observed("ns", &b));
        assert!(
            store
                .apply_account("ns", "app", Some("g@p.iam.gserviceaccount.com"))
                .len()
                == 1
        );
        assert!(
            store
                .apply_account("ns", "app", Some("g@p.iam.gserviceaccount.com"))
                .is_empty(),
            "unchanged"
        );
        assert!(store.apply_account("ns", "unbound", None).is_empty());
        let state = store
            .group(&Group::Account {
                namespace: "ns".into(),
                service_account: "app".into(),
            })
            .unwrap();
        assert_eq!(
            state.account,
            ServiceAccountState::WorkloadIdentity("g@p.iam.gserviceaccount.com".into())
        );
        // The same binding turns invalid: it leaves its group.
        let groups = store.apply(Observed {
            namespace: "ns",
            name: "b",
            generation: 2,
            spec: Err("roleArn is not an ARN".into()),
            status: None,
        });
        assert_eq!(groups.len(), 2);
        assert!(store.bindings_for("ns", "app").is_none());
        assert_eq!(
            store.counts(),
            Counts {
                valid: 0,
                invalid: 1,
                conflicts: 0
            }
        );
        let state = store
            .group(&Group::Invalid {
                namespace: "ns".into(),
                name: "b".into(),
            })
            .unwrap();
        assert_eq!(state.members[0].spec, Err("roleArn is not an ARN".into()));
        assert_eq!(store.delete_account("ns", "app"), Vec::new());
        // Annotations that are not Google service accounts are kept as they are.
        for gsa in [
            Some("odd-value"),
            Some(""),
            Some("a@p.iam.gserviceaccount.com"),
            None,
        ] {
            let a = Account::new("sa", gsa, 0);
            let want = match gsa {
                Some(g) if !g.is_empty() => ServiceAccountState::WorkloadIdentity(g.into()),
                _ => ServiceAccountState::NoWorkloadIdentity,
            };
            assert_eq!(a.state(), want, "{gsa:?}");
            assert_eq!(a.name(), "sa");
        }
    }

    #[test]
    fn a_relist_drops_what_it_did_not_see() {
        let store = Store::new();
        for name in ["a", "b", "c"] {
            let b = binding(name, name);
            store.apply(observed("ns", &b));
        }
        store.begin_relist();
        for name in ["a", "c"] {
            let b = binding(name, name);
            store.apply(observed("ns", &b));
        }
        let gone = store.end_relist();
        assert_eq!(
            gone,
            vec![Group::Account {
                namespace: "ns".into(),
                service_account: "b".into()
            }]
        );
        assert_eq!(store.counts().valid, 2);
        assert_eq!(all_groups(&store).len(), 2);
    }

    #[test]
    fn a_full_pass_walks_every_group_once_in_chunks() {
        let store = Store::new();
        for i in 0..50 {
            let b = binding(&format!("b{i:02}"), &format!("sa{:02}", i % 17));
            store.apply(observed(&format!("ns{}", i % 3), &b));
        }
        store.apply(Observed {
            namespace: "ns1",
            name: "bad",
            generation: 1,
            spec: Err("no".into()),
            status: None,
        });
        let all = all_groups(&store);
        for limit in [1, 2, 5, 1000] {
            let mut pass = Pass::Start;
            let mut seen = Vec::new();
            while let Some(chunk) = store.pass_chunk(&mut pass, limit) {
                assert!(chunk.len() <= limit.max(1) + 1, "{}", chunk.len());
                seen.extend(chunk);
            }
            assert_eq!(seen, all, "limit {limit}");
        }
        let mut distinct = all.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), all.len());
        assert_eq!(all.len(), 3 * 17 + 1 - count_missing(&store));
    }

    /// Service-account groups that a namespace happens not to have.
    fn count_missing(store: &Store) -> usize {
        (0..3)
            .map(|n| {
                (0..17)
                    .filter(|s| {
                        store
                            .bindings_for(&format!("ns{n}"), &format!("sa{s:02}"))
                            .is_none()
                    })
                    .count()
            })
            .sum()
    }

    #[test]
    fn seen_keeps_what_the_next_status_carries_over() {
        let status = AWSRoleBindingStatus {
            conditions: vec![crate::domain::crd::Condition {
                type_: READY.into(),
                status: "True".into(),
                reason: "Bound".into(),
                message: "m".into(),
                last_transition_time: "2026-11-22T10:00:00Z".into(),
                observed_generation: Some(3),
            }],
            observed_generation: Some(3),
            role_arn: Some("arn:aws:iam::123456789012:role/x".into()),
        };
        let seen = Seen::of(Some(&status));
        assert_eq!(seen.ready, 1);
        let back = seen.as_status().unwrap();
        assert_eq!(
            back.conditions[0].last_transition_time,
            "2026-11-22T10:00:00Z"
        );
        assert_eq!(seen.fingerprint, fingerprint(&status));
        assert_ne!(seen.fingerprint, fingerprint(&back));
        assert_eq!(Seen::of(None), Seen::default());
    }
}
