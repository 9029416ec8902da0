package dev.keel.bench;

import java.nio.file.Path;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicLong;

import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.processor.StateRestoreListener;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.RocksDBConfigSetter;
import org.apache.kafka.streams.state.Stores;
import org.rocksdb.BlockBasedTableConfig;
import org.rocksdb.BloomFilter;
import org.rocksdb.Cache;
import org.rocksdb.CompressionType;
import org.rocksdb.LRUCache;
import org.rocksdb.Options;
import org.rocksdb.WriteBufferManager;

/**
 * The workload of {@code keel bench engine} (src/bench.rs) as a Kafka Streams application, for
 * {@code keel bench engine --vs kafka-streams}.
 *
 * <p>Input: key a UTF-8 string ({@code k%08d}), value a long as 8 big-endian bytes (Keel's
 * {@code I64} serde and Kafka's {@code LongSerializer} agree). Per record one get, one put into
 * the persistent RocksDB store {@code sums} (changelog {@code <application.id>-sums-changelog},
 * as Keel names it) and one output: the key's running sum. One stream thread,
 * {@code exactly_once_v2}, the commit interval given, RocksDB options as Keel's defaults
 * ({@link KeelRocksDbOptions}), static group membership as Keel's runtime uses; every other
 * setting at Kafka Streams' default.
 *
 * <p>Usage: {@code java -Xmx256m -jar kstreams-reference.jar BOOTSTRAP INPUT OUTPUT APP_ID
 * STATE_DIR [COMMIT_INTERVAL_MS] [THREADS]}. Prints, one per line on stdout, for the
 * benchmark to time: {@code STARTING} just before {@code KafkaStreams.start()}, {@code STATE
 * <state>} on every state change, {@code RESTORED <records>} each time the application reaches
 * RUNNING (records restored from changelogs so far). Stops cleanly on SIGTERM.
 */
public final class KStreamsReference {
    /** Keel's StateConfig defaults (state/src/config.rs, state/src/env.rs). */
    public static final class KeelRocksDbOptions implements RocksDBConfigSetter {
        private static final long MIB = 1024L * 1024L;
        // One cache and one write buffer manager for every store of the process, as Keel's
        // StoreEnv; memtables are charged to the cache (64 MiB is the ceiling of both).
        private static final Cache CACHE = new LRUCache(64 * MIB);
        private static final WriteBufferManager WRITE_BUFFERS =
                new WriteBufferManager(32 * MIB, CACHE);

        @Override
        public void setConfig(String storeName, Options options, Map<String, Object> configs) {
            BlockBasedTableConfig table = (BlockBasedTableConfig) options.tableFormatConfig();
            table.setBlockCache(CACHE);
            table.setCacheIndexAndFilterBlocks(true);
            table.setPinL0FilterAndIndexBlocksInCache(true);
            table.setFilterPolicy(new BloomFilter(10, false));
            options.setTableFormatConfig(table);
            options.setWriteBufferManager(WRITE_BUFFERS);
            options.setWriteBufferSize(8 * MIB);
            options.setMaxWriteBufferNumber(3);
            // Keel's memtable whole-key Bloom filter (10 % of the memtable), added in issue 14.
            options.setMemtablePrefixBloomSizeRatio(0.1);
            options.setMemtableWholeKeyFiltering(true);
            options.setCompressionType(CompressionType.LZ4_COMPRESSION);
            options.setLevelCompactionDynamicLevelBytes(true);
            options.setMaxOpenFiles(-1);
            options.setMaxBackgroundJobs(2);
        }

        @Override
        public void close(String storeName, Options options) {
            // The cache and write buffer manager are shared by every store: never closed here.
        }
    }

    /** One get, one put, one output per record: the key's running sum. */
    static final class RunningSum implements Processor<String, Long, String, Long> {
        private ProcessorContext<String, Long> context;
        private KeyValueStore<String, Long> sums;

        @Override
        public void init(ProcessorContext<String, Long> context) {
            this.context = context;
            this.sums = context.getStateStore("sums");
        }

        @Override
        public void process(Record<String, Long> record) {
            Long before = sums.get(record.key());
            long sum = (before == null ? 0L : before) + record.value();
            sums.put(record.key(), sum);
            context.forward(record.withValue(sum));
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 5) {
            System.err.println("usage: kstreams-reference BOOTSTRAP INPUT OUTPUT APP_ID STATE_DIR"
                    + " [COMMIT_INTERVAL_MS] [THREADS]");
            System.exit(2);
        }
        String bootstrap = args[0];
        String input = args[1];
        String output = args[2];
        String applicationId = args[3];
        Path stateDir = Path.of(args[4]);
        long commitIntervalMs = args.length > 5 ? Long.parseLong(args[5]) : 100L;
        int threads = args.length > 6 ? Integer.parseInt(args[6]) : 1;

        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, applicationId);
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, commitIntervalMs);
        props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, threads);
        props.put(StreamsConfig.STATE_DIR_CONFIG, stateDir.toString());
        props.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1);
        props.put(StreamsConfig.ROCKSDB_CONFIG_SETTER_CLASS_CONFIG, KeelRocksDbOptions.class);
        props.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
        // Static membership, as Keel's runtime has it (group.instance.id per stream thread): a
        // restart takes its partitions back at once. Without it the restarted instance waits
        // out the old member's session timeout (45 s), because Kafka Streams does not leave
        // the group on close.
        props.put(StreamsConfig.consumerPrefix(ConsumerConfig.GROUP_INSTANCE_ID_CONFIG),
                applicationId + "-instance");

        StreamsBuilder builder = new StreamsBuilder();
        builder.addStateStore(Stores.keyValueStoreBuilder(
                Stores.persistentKeyValueStore("sums"), Serdes.String(), Serdes.Long()));
        builder.stream(input, Consumed.with(Serdes.String(), Serdes.Long()))
                .process(RunningSum::new, "sums")
                .to(output, Produced.with(Serdes.String(), Serdes.Long()));

        KafkaStreams streams = new KafkaStreams(builder.build(), props);
        AtomicLong restored = new AtomicLong();
        streams.setGlobalStateRestoreListener(new StateRestoreListener() {
            @Override
            public void onRestoreStart(TopicPartition tp, String store, long start, long end) {}

            @Override
            public void onBatchRestored(TopicPartition tp, String store, long end, long n) {
                restored.addAndGet(n);
            }

            @Override
            public void onRestoreEnd(TopicPartition tp, String store, long total) {}
        });
        CountDownLatch stopped = new CountDownLatch(1);
        streams.setStateListener((now, before) -> {
            System.out.println("STATE " + now);
            if (now == KafkaStreams.State.RUNNING) {
                System.out.println("RESTORED " + restored.get());
            }
            if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) {
                stopped.countDown();
            }
            System.out.flush();
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close();
            stopped.countDown();
        }));
        System.out.println("STARTING");
        System.out.flush();
        streams.start();
        stopped.await();
        streams.close();
    }
}
