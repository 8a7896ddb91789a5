package dev.qlora4j;

/**
 * A JVM system property switched for a test, and put back when the scope closes: the one place for the
 * save / set / restore that tests which flip a property (a kernel variant, the activation dtype, a cache folder)
 * would otherwise each repeat. Opening the scope remembers the previous value (null when the property was unset)
 * and sets the new one; {@link #close()} restores the previous value, or clears the property when it was unset, so
 * a test leaves the JVM's properties as it found them for the tests after it.
 *
 * <pre>{@code
 * try (var p = TemporaryProperty.set(KEY, "v")) {
 *     ...   // KEY is "v" here
 * }         // KEY is back to what it was
 * }</pre>
 *
 * For a whole test class, open it in {@code @BeforeAll} / {@code @BeforeEach} and close it in the matching
 * {@code @AfterAll} / {@code @AfterEach}. Not thread-safe: system properties are global to the JVM.
 */
public final class TemporaryProperty implements AutoCloseable {
    private final String key;
    private final String previous;
    private boolean closed;

    private TemporaryProperty(String key, String previous) {
        this.key = key;
        this.previous = previous;
    }

    /** Remembers key's current value (null if unset), then sets key to value (null: clears it). */
    public static TemporaryProperty set(String key, String value) {
        TemporaryProperty scope = new TemporaryProperty(key, System.getProperty(key));
        apply(key, value);
        return scope;
    }

    /** Remembers key's current value (null if unset) and changes nothing: the test sets it later, the scope restores it. */
    public static TemporaryProperty save(String key) {
        return new TemporaryProperty(key, System.getProperty(key));
    }

    /** Remembers key's current value (null if unset), then clears key. */
    public static TemporaryProperty clear(String key) {
        return set(key, null);
    }

    /** Puts the previous value back (clears the property when it was unset); a second close does nothing. */
    @Override
    public void close() {
        if (closed) return;
        closed = true;
        apply(key, previous);
    }

    private static void apply(String key, String value) {
        if (value == null) System.clearProperty(key);
        else System.setProperty(key, value);
    }
}
