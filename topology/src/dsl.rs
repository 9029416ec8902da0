//! A small DSL over the Processor API for the common cases: filter and map a stream, build a
//! table from a topic (a CDC topic, say), join a stream against it, aggregate into a store,
//! write to a topic. Each step adds an ordinary node to a [`TopologyBuilder`], so a DSL
//! topology is a topology like any other (sub-topologies, stores, changelogs, the test driver).
//!
//! ```
//! use keel_topology::dsl::StreamsBuilder;
//! use keel_topology::serde::{I64, Utf8};
//!
//! let b = StreamsBuilder::new();
//! let prices = b.table("prices", "sku-prices", Utf8, I64);
//! b.stream("order-lines", Utf8, I64)
//!     .filter(|_, qty| *qty > 0)
//!     .join(&prices, |qty, price| qty * price)
//!     .aggregate("revenue", Utf8, I64, || 0, |_, line, total| total + line)
//!     .to("revenue-by-sku", Utf8, I64);
//! let topology = b.build().expect("a valid topology");
//! assert_eq!(topology.sub_topologies().len(), 1, "the join keeps stream and table together");
//! ```

use std::cell::RefCell;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;

use keel_state::StoreKind;

use crate::error::{ProcessError, Result};
use crate::processor::{Context, Processor};
use crate::record::Record;
use crate::serde::Serde;
use crate::topology::{Topology, TopologyBuilder};

/// Builds a topology step by step; clone-free handles ([`KStream`], [`KTable`]) name the nodes.
#[derive(Debug, Clone, Default)]
pub struct StreamsBuilder {
    inner: Rc<RefCell<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    builder: TopologyBuilder,
    next: usize,
}

impl StreamsBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    fn name(&self, what: &str) -> String {
        let mut inner = self.inner.borrow_mut();
        inner.next += 1;
        format!("{what}-{:04}", inner.next)
    }

    fn with<R>(&self, f: impl FnOnce(&mut TopologyBuilder) -> R) -> R {
        f(&mut self.inner.borrow_mut().builder)
    }

    /// The records of `topic`.
    pub fn stream<K, V>(
        &self,
        topic: &str,
        key: impl Serde<K>,
        value: impl Serde<V>,
    ) -> KStream<K, V>
    where
        K: Clone + Send + 'static,
        V: Clone + Send + 'static,
    {
        let node = self.name("source");
        self.with(|b| {
            b.add_source(&node, &[topic], key, value);
        });
        KStream {
            builder: self.clone(),
            node,
            _types: PhantomData,
        }
    }

    /// The latest value per key of `topic` (a null value deletes the key), materialized in the
    /// key-value store `store` (changelogged like any store). Values are kept serialized with
    /// `value`.
    pub fn table<K, V, SK, SV>(&self, store: &str, topic: &str, key: SK, value: SV) -> KTable<K, V>
    where
        K: Clone + Send + 'static,
        V: Clone + Send + 'static,
        SK: Serde<K> + Clone,
        SV: Serde<V> + Clone,
    {
        let source = self.name("table-source");
        let node = self.name("table");
        let table_key = key.clone();
        let nullable = Nullable(value.clone());
        let store_name = store.to_owned();
        let key_for_store: Arc<dyn Serde<K>> = Arc::new(table_key);
        let value_for_store: Arc<dyn Serde<V>> = Arc::new(value.clone());
        let (k2, v2) = (key_for_store.clone(), value_for_store.clone());
        self.with(|b| {
            b.add_source(&source, &[topic], key, nullable)
                .add_processor(
                    &node,
                    move || Materialize {
                        store: store_name.clone(),
                        key: k2.clone(),
                        value: v2.clone(),
                    },
                    &[&source],
                );
            b.add_state_store(store, StoreKind::KeyValue, &[&node]);
        });
        KTable {
            store: store.to_owned(),
            key: key_for_store,
            value: value_for_store,
        }
    }

    /// The checked topology.
    pub fn build(self) -> Result<Topology> {
        let inner = Rc::try_unwrap(self.inner)
            .map(RefCell::into_inner)
            .unwrap_or_else(|shared| {
                let mut b = shared.borrow_mut();
                Inner {
                    builder: std::mem::take(&mut b.builder),
                    next: b.next,
                }
            });
        inner.builder.build()
    }
}

/// A serde that lets a table's source read tombstones: `None` for a null payload.
struct Nullable<S>(S);

impl<T, S: Serde<T>> Serde<Option<T>> for Nullable<S> {
    fn serialize(
        &self,
        topic: &str,
        value: &Option<T>,
    ) -> Result<Option<Vec<u8>>, crate::SerdeError> {
        match value {
            Some(v) => self.0.serialize(topic, v),
            None => Ok(None),
        }
    }
    fn deserialize(
        &self,
        topic: &str,
        bytes: Option<&[u8]>,
    ) -> Result<Option<T>, crate::SerdeError> {
        bytes
            .map(|b| self.0.deserialize(topic, Some(b)))
            .transpose()
    }
}

/// A stream of typed records, named by the node that produces them.
pub struct KStream<K, V> {
    builder: StreamsBuilder,
    node: String,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> std::fmt::Debug for KStream<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KStream").field("node", &self.node).finish()
    }
}

/// A table materialized in a key-value store.
pub struct KTable<K, V> {
    store: String,
    key: Arc<dyn Serde<K>>,
    value: Arc<dyn Serde<V>>,
}

impl<K, V> std::fmt::Debug for KTable<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KTable")
            .field("store", &self.store)
            .finish()
    }
}

impl<K, V> KTable<K, V> {
    pub fn store_name(&self) -> &str {
        &self.store
    }
}

impl<K, V> KStream<K, V>
where
    K: Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    fn then<K2, V2, P, F>(&self, what: &str, factory: F) -> KStream<K2, V2>
    where
        P: Processor<Key = K, Value = V>,
        F: Fn() -> P + Send + Sync + 'static,
    {
        let node = self.builder.name(what);
        let parent = self.node.clone();
        self.builder.with(|b| {
            b.add_processor(&node, factory, &[&parent]);
        });
        KStream {
            builder: self.builder.clone(),
            node,
            _types: PhantomData,
        }
    }

    /// Keeps the records for which `predicate` holds.
    pub fn filter(
        &self,
        predicate: impl Fn(&K, &V) -> bool + Send + Sync + 'static,
    ) -> KStream<K, V> {
        let predicate = Arc::new(predicate);
        self.then("filter", move || Filter {
            predicate: predicate.clone(),
        })
    }

    /// Replaces each value.
    pub fn map_values<V2>(&self, f: impl Fn(&K, V) -> V2 + Send + Sync + 'static) -> KStream<K, V2>
    where
        V2: Clone + Send + 'static,
    {
        let f = Arc::new(f);
        self.then("map-values", move || MapValues { f: f.clone() })
    }

    /// Replaces key and value. A stateful step after a key change needs
    /// [`KStream::repartition`] so records reach the task of their new key.
    pub fn map<K2, V2>(
        &self,
        f: impl Fn(K, V) -> (K2, V2) + Send + Sync + 'static,
    ) -> KStream<K2, V2>
    where
        K2: Clone + Send + 'static,
        V2: Clone + Send + 'static,
    {
        let f = Arc::new(f);
        self.then("map", move || Map { f: f.clone() })
    }

    /// Sends the records through `<application.id>-<name>-repartition`, so that they land on
    /// the partition (and task) of their current key.
    pub fn repartition<SK, SV>(&self, name: &str, key: SK, value: SV) -> KStream<K, V>
    where
        SK: Serde<K> + Clone,
        SV: Serde<V> + Clone,
    {
        let parent = self.node.clone();
        self.builder.with(|b| {
            b.add_repartition::<K, V, SK, SV>(name, key, value, &[&parent]);
        });
        KStream {
            builder: self.builder.clone(),
            node: name.to_owned(),
            _types: PhantomData,
        }
    }

    /// Joins each record with the table's current value for its key (inner join: records whose
    /// key has no table value are dropped). The stream and the table must be co-partitioned.
    pub fn join<T, R>(
        &self,
        table: &KTable<K, T>,
        joiner: impl Fn(&V, &T) -> R + Send + Sync + 'static,
    ) -> KStream<K, R>
    where
        T: Send + 'static,
        R: Clone + Send + 'static,
    {
        let joiner = Arc::new(joiner);
        let (store, key, value) = (table.store.clone(), table.key.clone(), table.value.clone());
        let joined = self.then("join", move || Join {
            store: store.clone(),
            key: key.clone(),
            value: value.clone(),
            joiner: joiner.clone(),
        });
        let (node, store) = (joined.node.clone(), table.store.clone());
        self.builder.with(|b| {
            b.connect_store(&store, &node);
        });
        joined
    }

    /// Folds the records of each key into the key-value store `store` (created here; keys and
    /// aggregates kept serialized with `key` and `serde`) and emits every new aggregate.
    pub fn aggregate<A, SK, SA>(
        &self,
        store: &str,
        key: SK,
        serde: SA,
        init: impl Fn() -> A + Send + Sync + 'static,
        fold: impl Fn(&K, V, A) -> A + Send + Sync + 'static,
    ) -> KStream<K, A>
    where
        A: Clone + Send + 'static,
        SK: Serde<K>,
        SA: Serde<A>,
    {
        let key: Arc<dyn Serde<K>> = Arc::new(key);
        let serde: Arc<dyn Serde<A>> = Arc::new(serde);
        let (init, fold) = (Arc::new(init), Arc::new(fold));
        let store_name = store.to_owned();
        let out = self.then("aggregate", move || Aggregate {
            store: store_name.clone(),
            key: key.clone(),
            serde: serde.clone(),
            init: init.clone(),
            fold: fold.clone(),
        });
        let node = out.node.clone();
        self.builder.with(|b| {
            b.add_state_store(store, StoreKind::KeyValue, &[&node]);
        });
        out
    }

    /// Writes the records to `topic`.
    pub fn to(&self, topic: &str, key: impl Serde<K>, value: impl Serde<V>) {
        let node = self.builder.name("sink");
        let parent = self.node.clone();
        self.builder.with(|b| {
            b.add_sink(&node, topic, key, value, &[&parent]);
        });
    }

    /// Adds a hand-written processor after this step.
    pub fn process<K2, V2, P>(
        &self,
        name: &str,
        factory: impl Fn() -> P + Send + Sync + 'static,
    ) -> KStream<K2, V2>
    where
        P: Processor<Key = K, Value = V>,
    {
        let parent = self.node.clone();
        self.builder.with(|b| {
            b.add_processor(name, factory, &[&parent]);
        });
        KStream {
            builder: self.builder.clone(),
            node: name.to_owned(),
            _types: PhantomData,
        }
    }
}

type Pred<K, V> = Arc<dyn Fn(&K, &V) -> bool + Send + Sync>;

struct Filter<K, V> {
    predicate: Pred<K, V>,
}

impl<K: Clone + Send + 'static, V: Clone + Send + 'static> Processor for Filter<K, V> {
    type Key = K;
    type Value = V;
    fn process(&mut self, ctx: &mut Context<'_>, r: Record<K, V>) -> Result<(), ProcessError> {
        if (self.predicate)(&r.key, &r.value) {
            ctx.forward(r);
        }
        Ok(())
    }
}

type ValueMapper<K, V, V2> = Arc<dyn Fn(&K, V) -> V2 + Send + Sync>;

struct MapValues<K, V, V2> {
    f: ValueMapper<K, V, V2>,
}

impl<K: Clone + Send + 'static, V: Send + 'static, V2: Clone + Send + 'static> Processor
    for MapValues<K, V, V2>
{
    type Key = K;
    type Value = V;
    fn process(&mut self, ctx: &mut Context<'_>, r: Record<K, V>) -> Result<(), ProcessError> {
        let value = (self.f)(&r.key, r.value);
        ctx.forward(Record {
            key: r.key,
            value,
            timestamp: r.timestamp,
            headers: r.headers,
        });
        Ok(())
    }
}

type Mapper<K, V, K2, V2> = Arc<dyn Fn(K, V) -> (K2, V2) + Send + Sync>;

struct Map<K, V, K2, V2> {
    f: Mapper<K, V, K2, V2>,
}

impl<K: Send + 'static, V: Send + 'static, K2: Clone + Send + 'static, V2: Clone + Send + 'static>
    Processor for Map<K, V, K2, V2>
{
    type Key = K;
    type Value = V;
    fn process(&mut self, ctx: &mut Context<'_>, r: Record<K, V>) -> Result<(), ProcessError> {
        let (key, value) = (self.f)(r.key, r.value);
        ctx.forward(Record {
            key,
            value,
            timestamp: r.timestamp,
            headers: r.headers,
        });
        Ok(())
    }
}

fn encode<T: 'static>(
    serde: &dyn Serde<T>,
    store: &str,
    what: &str,
    v: &T,
) -> Result<Vec<u8>, ProcessError> {
    serde
        .serialize(store, v)
        .map_err(|e| ProcessError::BadInput(format!("{what} for store {store}: {e}")))?
        .ok_or_else(|| {
            ProcessError::BadInput(format!("{what} for store {store} serialized to null"))
        })
}

struct Materialize<K, V> {
    store: String,
    key: Arc<dyn Serde<K>>,
    value: Arc<dyn Serde<V>>,
}

impl<K: Send + 'static, V: Send + 'static> Processor for Materialize<K, V> {
    type Key = K;
    type Value = Option<V>;
    fn process(
        &mut self,
        ctx: &mut Context<'_>,
        r: Record<K, Option<V>>,
    ) -> Result<(), ProcessError> {
        let key = encode(&*self.key, &self.store, "key", &r.key)?;
        let store = ctx.kv(&self.store)?;
        match r.value {
            Some(v) => {
                let bytes = encode(&*self.value, &self.store, "value", &v)?;
                store.put(key, bytes);
            }
            None => store.delete(key),
        }
        Ok(())
    }
}

type Joiner<V, T, R> = Arc<dyn Fn(&V, &T) -> R + Send + Sync>;

struct Join<K, V, T, R> {
    store: String,
    key: Arc<dyn Serde<K>>,
    value: Arc<dyn Serde<T>>,
    joiner: Joiner<V, T, R>,
}

impl<K: Clone + Send + 'static, V: Send + 'static, T: Send + 'static, R: Clone + Send + 'static>
    Processor for Join<K, V, T, R>
{
    type Key = K;
    type Value = V;
    fn process(&mut self, ctx: &mut Context<'_>, r: Record<K, V>) -> Result<(), ProcessError> {
        let key = encode(&*self.key, &self.store, "key", &r.key)?;
        let Some(bytes) = ctx.kv(&self.store)?.get(&key)? else {
            return Ok(());
        };
        let table_value = self
            .value
            .deserialize(&self.store, Some(&bytes))
            .map_err(|e| {
                ProcessError::Fatal(format!(
                    "store {} holds an unreadable value: {e}",
                    self.store
                ))
            })?;
        let joined = (self.joiner)(&r.value, &table_value);
        ctx.forward(Record {
            key: r.key,
            value: joined,
            timestamp: r.timestamp,
            headers: r.headers,
        });
        Ok(())
    }
}

type Fold<K, V, A> = Arc<dyn Fn(&K, V, A) -> A + Send + Sync>;

struct Aggregate<K, V, A> {
    store: String,
    key: Arc<dyn Serde<K>>,
    serde: Arc<dyn Serde<A>>,
    init: Arc<dyn Fn() -> A + Send + Sync>,
    fold: Fold<K, V, A>,
}

impl<K: Clone + Send + 'static, V: Send + 'static, A: Clone + Send + 'static> Processor
    for Aggregate<K, V, A>
{
    type Key = K;
    type Value = V;
    fn process(&mut self, ctx: &mut Context<'_>, r: Record<K, V>) -> Result<(), ProcessError> {
        let key = encode(&*self.key, &self.store, "key", &r.key)?;
        let store = ctx.kv(&self.store)?;
        let current = match store.get(&key)? {
            Some(bytes) => self
                .serde
                .deserialize(&self.store, Some(&bytes))
                .map_err(|e| {
                    ProcessError::Fatal(format!(
                        "store {} holds an unreadable aggregate: {e}",
                        self.store
                    ))
                })?,
            None => (self.init)(),
        };
        let next = (self.fold)(&r.key, r.value, current);
        let bytes = encode(&*self.serde, &self.store, "aggregate", &next)?;
        store.put(key, bytes);
        ctx.forward(Record {
            key: r.key,
            value: next,
            timestamp: r.timestamp,
            headers: r.headers,
        });
        Ok(())
    }
}
