package dev.qlora4j.io;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.channels.FileChannel;
import java.nio.file.AtomicMoveNotSupportedException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.concurrent.ThreadLocalRandom;

/**
 * Write-then-rename: bytes go to a hidden temp file next to the target, are fsynced, and the
 * temp file is renamed over the target in one step, so readers see the old file or the new
 * one, never a half-written one. {@link #abort()} deletes the temp file.
 */
final class AtomicFile implements AutoCloseable {
    private final Path target;
    private final Path temp;
    private final FileChannel channel;
    private boolean done;

    private AtomicFile(Path target, Path temp, FileChannel channel) {
        this.target = target;
        this.temp = temp;
        this.channel = channel;
    }

    static AtomicFile create(Path target) {
        Path abs = target.toAbsolutePath();
        Path dir = abs.getParent();
        try {
            Files.createDirectories(dir);
            // CREATE_NEW with default permissions (umask applies), unlike Files.createTempFile's 0600.
            for (int attempt = 0; ; attempt++) {
                Path temp = dir.resolve("." + abs.getFileName() + "." + Long.toHexString(ThreadLocalRandom.current().nextLong()) + ".tmp");
                try {
                    FileChannel ch = FileChannel.open(temp, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE);
                    return new AtomicFile(abs, temp, ch);
                } catch (java.nio.file.FileAlreadyExistsException e) {
                    if (attempt > 10) throw e;
                }
            }
        } catch (IOException e) {
            throw new UncheckedIOException(target + ": cannot create a temp file in " + dir + " (" + e
                    + "); check that the directory exists and is writable", e);
        }
    }

    FileChannel channel() { return channel; }

    Path target() { return target; }

    /** fsync, rename over the target, fsync the directory (so the rename itself is durable). */
    void commit() {
        try {
            channel.force(true);
            channel.close();
            try {
                Files.move(temp, target, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
            } catch (AtomicMoveNotSupportedException e) {
                Files.move(temp, target, StandardCopyOption.REPLACE_EXISTING);
            }
            done = true;
        } catch (IOException e) {
            abort();
            throw new UncheckedIOException(target + ": cannot write (" + e + "); the previous file, if any, is unchanged", e);
        }
        syncDirectory(target.getParent());
    }

    /** Drops the temp file; the target is left as it was. Idempotent. */
    void abort() {
        if (done) return;
        done = true;
        try {
            channel.close();
        } catch (IOException ignored) {
            // the temp file is deleted next; nothing to keep
        }
        try {
            Files.deleteIfExists(temp);
        } catch (IOException ignored) {
            // best effort: a leftover hidden .tmp file does not affect the target
        }
    }

    @Override
    public void close() { abort(); }

    private static void syncDirectory(Path dir) {
        try (FileChannel ch = FileChannel.open(dir, StandardOpenOption.READ)) {
            ch.force(true);
        } catch (IOException | UnsupportedOperationException ignored) {
            // not every OS/file system can fsync a directory; the rename has still happened
        }
    }
}
