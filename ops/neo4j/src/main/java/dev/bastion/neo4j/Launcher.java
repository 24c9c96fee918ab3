package dev.bastion.neo4j;

import java.nio.file.Path;
import java.time.Duration;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.neo4j.configuration.GraphDatabaseInternalSettings;
import org.neo4j.configuration.GraphDatabaseSettings;
import org.neo4j.configuration.connectors.BoltConnector;
import org.neo4j.configuration.connectors.HttpConnector;
import org.neo4j.configuration.connectors.HttpsConnector;
import org.neo4j.configuration.helpers.SocketAddress;
import org.neo4j.dbms.api.DatabaseManagementService;
import org.neo4j.dbms.api.DatabaseManagementServiceBuilder;
import org.neo4j.graphdb.GraphDatabaseService;
import org.neo4j.io.ByteUnit;

/**
 * A throwaway Neo4j for tests: the embedded community DBMS with only its Bolt connector,
 * on 127.0.0.1:&lt;port&gt;, authentication off, everything under &lt;home&gt;.
 *
 * <pre>java -cp … dev.bastion.neo4j.Launcher &lt;port&gt; &lt;home&gt;</pre>
 *
 * scripts/neo4j-up starts it and waits for the {@code NEO4J_READY} line on stdout (printed
 * once Bolt is listening and the default database has answered a first query) and for the
 * port to accept connections. SIGTERM (or SIGINT) shuts the DBMS down cleanly through a shutdown hook;
 * a failure to start prints the cause and exits 1, so the script fails loudly.
 */
public final class Launcher {
    private static final Duration AVAILABLE_TIMEOUT = Duration.ofMinutes(2);

    private Launcher() {}

    public static void main(String[] args) throws InterruptedException {
        if (args.length != 2) {
            System.err.println("usage: Launcher <bolt-port> <home-directory>");
            System.exit(2);
        }
        int port = Integer.parseInt(args[0]);
        Path home = Path.of(args[1]).toAbsolutePath();

        DatabaseManagementService dbms;
        try {
            dbms = new DatabaseManagementServiceBuilder(home)
                    // Bolt only, loopback only; no HTTP(S) endpoints, no authentication.
                    .setConfig(BoltConnector.enabled, true)
                    .setConfig(BoltConnector.listen_address, new SocketAddress("127.0.0.1", port))
                    .setConfig(BoltConnector.advertised_address, new SocketAddress("127.0.0.1", port))
                    .setConfig(HttpConnector.enabled, false)
                    .setConfig(HttpsConnector.enabled, false)
                    .setConfig(GraphDatabaseSettings.auth_enabled, false)
                    // No anonymous usage reports to neo4j.com.
                    .setConfig(GraphDatabaseSettings.udc_enabled, false)
                    // Netty waits a 5 s quiet period per Bolt connector on shutdown (10 s in
                    // all); a test server has no clients left to drain, so stop at once.
                    .setConfig(GraphDatabaseInternalSettings.netty_server_shutdown_quiet_period, 0)
                    .setConfig(GraphDatabaseInternalSettings.netty_server_shutdown_timeout, Duration.ofSeconds(2))
                    // Small footprint: test stores are small (larger ones still work, just slower).
                    .setConfig(GraphDatabaseSettings.pagecache_memory, ByteUnit.mebiBytes(64))
                    .setConfig(GraphDatabaseSettings.logical_log_rotation_threshold, ByteUnit.mebiBytes(1))
                    .setConfig(GraphDatabaseSettings.preallocate_logical_logs, false)
                    .setConfig(GraphDatabaseSettings.keep_logical_logs, "false")
                    .build();
        } catch (Throwable e) {
            System.err.println("NEO4J_FAILED: " + e);
            e.printStackTrace();
            System.exit(1);
            return;
        }

        // The JVM runs this on SIGTERM/SIGINT (not on SIGKILL): stop Bolt, flush the store.
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                dbms.shutdown();
            } finally {
                stopped.countDown();
            }
        }, "neo4j-shutdown"));

        try {
            GraphDatabaseService db = dbms.database(GraphDatabaseSettings.DEFAULT_DATABASE_NAME);
            if (!db.isAvailable(AVAILABLE_TIMEOUT.toMillis())) {
                throw new IllegalStateException("database " + db.databaseName() + " not available within "
                        + AVAILABLE_TIMEOUT.toSeconds() + " s");
            }
            // The first Cypher query loads and compiles the parser and planner (≈ 5 s on a cold
            // JVM): pay for it here, so "ready" means a client's first query answers promptly.
            db.executeTransactionally("RETURN 1");
        } catch (Throwable e) {
            // Neo4j's threads would keep the JVM alive: exit (the hook shuts the DBMS down).
            System.err.println("NEO4J_FAILED: " + e);
            e.printStackTrace();
            System.exit(1);
        }
        System.out.println("NEO4J_READY bolt://127.0.0.1:" + port);
        System.out.flush();

        // Neo4j's own threads keep the JVM alive too; this just parks main until shutdown.
        while (!stopped.await(1, TimeUnit.HOURS)) {
            // keep waiting
        }
    }
}
