package dev.qlora4j.cuda;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.AtomicMoveNotSupportedException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.Arrays;
import java.util.HexFormat;
import java.util.Locale;
import java.util.concurrent.atomic.AtomicBoolean;

/**
 * The compiled kernels (cubins) of our PTX modules on disk, so that only the first process on a machine pays the
 * driver's JIT compilation (about 10 s for the training kernels on an H200) and later ones load in milliseconds.
 * The driver has a JIT cache of its own, but it is not always there to help (it measured no effect from one
 * process to the next on the benchmark machine; containers start with an empty one).
 *
 * <p>Where: {@code -Dqlora4j.kernelCache=DIR}, else the environment variable {@code QLORA4J_KERNEL_CACHE}, else
 * {@code $XDG_CACHE_HOME/qlora4j/kernels} or {@code ~/.cache/qlora4j/kernels}; the value {@code off} turns the
 * cache off. An entry is named by the PTX's SHA-256, the compute capability and the driver version (a new driver
 * may compile differently), and holds a header with the cubin's length and SHA-256: a truncated or corrupt file
 * is never handed to the driver (it is deleted and the PTX compiled again). Entries are written to a temporary
 * file and renamed into place, so concurrent processes never see half a file. I/O problems only cost the
 * compilation (one warning on stderr); they never fail a run.
 */
public final class KernelCache {
    public static final String PROPERTY = "qlora4j.kernelCache";
    public static final String ENVIRONMENT = "QLORA4J_KERNEL_CACHE";
    static final byte[] MAGIC = "QL4JCUBN".getBytes(java.nio.charset.StandardCharsets.US_ASCII);
    static final int HEADER_BYTES = MAGIC.length + Long.BYTES + 32;   // magic, cubin length, SHA-256 of the cubin

    private static final KernelCache OFF = new KernelCache(null);

    private final Path dir;   // null: off
    private final AtomicBoolean warned = new AtomicBoolean();

    private KernelCache(Path dir) { this.dir = dir; }

    /** A cache in dir. */
    public static KernelCache in(Path dir) { return new KernelCache(dir); }

    public static KernelCache off() { return OFF; }

    /** The cache the system property, the environment variable or the default location names. */
    public static KernelCache fromEnvironment() {
        String v = System.getProperty(PROPERTY);
        if (v == null || v.isBlank()) v = System.getenv(ENVIRONMENT);
        if (v != null && !v.isBlank()) {
            String t = v.trim();
            return switch (t.toLowerCase(Locale.ROOT)) {
                case "off", "none", "false", "0" -> OFF;
                default -> in(Path.of(t));
            };
        }
        String xdg = System.getenv("XDG_CACHE_HOME");
        Path base = xdg != null && !xdg.isBlank() ? Path.of(xdg) : Path.of(System.getProperty("user.home"), ".cache");
        return in(base.resolve("qlora4j").resolve("kernels"));
    }

    public boolean enabled() { return dir != null; }

    /** The directory (null when off). */
    public Path directory() { return dir; }

    /** The entry name for a PTX text compiled by a driver of driverVersion for compute capability major.minor. */
    static String key(byte[] ptx, int major, int minor, int driverVersion) {
        String h = HexFormat.of().formatHex(sha256(ptx), 0, 16);
        return h + "-sm" + major + minor + "-cuda" + driverVersion + ".cubin";
    }

    /** The cubin of an entry, or null when there is none or it fails its length/checksum check (then it is deleted). */
    byte[] read(String key) {
        if (dir == null) return null;
        Path p = dir.resolve(key);
        byte[] file;
        try {
            if (!Files.isRegularFile(p)) return null;
            file = Files.readAllBytes(p);
        } catch (IOException e) {
            warn("cannot read " + p + ": " + e.getMessage());
            return null;
        }
        byte[] cubin = unwrap(file);
        if (cubin == null) remove(key);
        return cubin;
    }

    /** Stores a cubin under key (temp file + rename); failures are a warning. */
    void write(String key, byte[] cubin) {
        if (dir == null) return;
        Path tmp = null;
        try {
            Files.createDirectories(dir);
            tmp = Files.createTempFile(dir, key, ".tmp");
            Files.write(tmp, wrap(cubin));
            try {
                Files.move(tmp, dir.resolve(key), StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
            } catch (AtomicMoveNotSupportedException e) {
                Files.move(tmp, dir.resolve(key), StandardCopyOption.REPLACE_EXISTING);
            }
            tmp = null;
        } catch (IOException | UnsupportedOperationException e) {
            warn("cannot write the compiled kernels to " + dir + " (" + e.getMessage() + "); set -D" + PROPERTY
                    + "=DIR or " + ENVIRONMENT + "=DIR to a writable folder, or =off");
        } finally {
            if (tmp != null) {
                try { Files.deleteIfExists(tmp); } catch (IOException ignored) { /* the warning was given */ }
            }
        }
    }

    /** Deletes an entry (a stale or corrupt one). */
    void remove(String key) {
        if (dir == null) return;
        try { Files.deleteIfExists(dir.resolve(key)); } catch (IOException e) { warn("cannot delete " + dir.resolve(key) + ": " + e.getMessage()); }
    }

    static byte[] wrap(byte[] cubin) {
        ByteBuffer b = ByteBuffer.allocate(HEADER_BYTES + cubin.length).order(ByteOrder.LITTLE_ENDIAN);
        b.put(MAGIC).putLong(cubin.length).put(sha256(cubin)).put(cubin);
        return b.array();
    }

    /** The cubin of a file written by wrap, or null when the file is not one (wrong magic, length or checksum). */
    static byte[] unwrap(byte[] file) {
        if (file.length < HEADER_BYTES || !Arrays.equals(file, 0, MAGIC.length, MAGIC, 0, MAGIC.length)) return null;
        ByteBuffer b = ByteBuffer.wrap(file).order(ByteOrder.LITTLE_ENDIAN);
        long n = b.getLong(MAGIC.length);
        if (n != file.length - HEADER_BYTES) return null;
        byte[] cubin = Arrays.copyOfRange(file, HEADER_BYTES, file.length);
        byte[] sum = Arrays.copyOfRange(file, MAGIC.length + Long.BYTES, HEADER_BYTES);
        return MessageDigest.isEqual(sum, sha256(cubin)) ? cubin : null;
    }

    private static byte[] sha256(byte[] data) {
        try {
            return MessageDigest.getInstance("SHA-256").digest(data);
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException("SHA-256 is part of every Java runtime", e);
        }
    }

    private void warn(String message) {
        if (warned.compareAndSet(false, true)) System.err.println("qlora4j: kernel cache: " + message);
    }

    @Override
    public String toString() { return dir == null ? "KernelCache[off]" : "KernelCache[" + dir + "]"; }
}
