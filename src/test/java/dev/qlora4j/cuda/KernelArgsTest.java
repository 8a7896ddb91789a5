package dev.qlora4j.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.util.Random;
import org.junit.jupiter.api.Test;

class KernelArgsTest {

    @Test
    void pointerArrayPointsAtEachValueInOrder() {
        Random rnd = new Random();
        long ptr = rnd.nextLong() & 0x7FFF_FFFF_FFF0L;
        int i32 = rnd.nextInt();
        long i64 = rnd.nextLong();
        float f32 = rnd.nextFloat() * 1000 - 500;
        KernelArgs args = KernelArgs.of().ptr(ptr).i32(i32).i64(i64).f32(f32).ptr(0);
        assertEquals(5, args.count());
        try (Arena arena = Arena.ofConfined()) {
            MemorySegment params = args.layout(arena);
            assertEquals(5 * ValueLayout.ADDRESS.byteSize(), params.byteSize());
            MemorySegment[] slot = new MemorySegment[5];
            for (int i = 0; i < 5; i++) {
                slot[i] = params.getAtIndex(ValueLayout.ADDRESS, i).reinterpret(KernelArgs.SLOT_BYTES);
                assertEquals(0, slot[i].address() % 8, "slot " + i + " is 8-byte aligned");
            }
            assertEquals(ptr, slot[0].get(ValueLayout.JAVA_LONG, 0));
            assertEquals(i32, slot[1].get(ValueLayout.JAVA_INT, 0));
            assertEquals(i64, slot[2].get(ValueLayout.JAVA_LONG, 0));
            assertEquals(Float.floatToRawIntBits(f32), Float.floatToRawIntBits(slot[3].get(ValueLayout.JAVA_FLOAT, 0)));
            assertEquals(0L, slot[4].get(ValueLayout.JAVA_LONG, 0));
            // Slots do not overlap: consecutive, one 8-byte slot each.
            for (int i = 1; i < 5; i++) assertEquals(slot[i - 1].address() + 8, slot[i].address());
        }
    }

    @Test
    void growsPastItsInitialCapacityAndCanBeLaidOutTwice() {
        KernelArgs args = KernelArgs.of();
        for (int i = 0; i < 20; i++) args.i32(i * 7);
        try (Arena a1 = Arena.ofConfined(); Arena a2 = Arena.ofConfined()) {
            MemorySegment p1 = args.layout(a1);
            MemorySegment p2 = args.layout(a2);
            for (int i = 0; i < 20; i++) {
                assertEquals(i * 7, p1.getAtIndex(ValueLayout.ADDRESS, i).reinterpret(4).get(ValueLayout.JAVA_INT, 0));
                assertEquals(i * 7, p2.getAtIndex(ValueLayout.ADDRESS, i).reinterpret(4).get(ValueLayout.JAVA_INT, 0));
            }
        }
    }

    @Test
    void reusedScratchHoldsEachLaunchsValuesAndGrows() {
        Random rnd = new Random();
        KernelArgs.Scratch scratch = new KernelArgs.Scratch();
        int initial = scratch.capacity();
        for (int round = 0; round < 3; round++) {
            int count = round == 2 ? initial + 5 : 6;   // the last round outgrows the initial block
            KernelArgs args = KernelArgs.of();
            long[] expect = new long[count];
            for (int i = 0; i < count; i++) {
                switch (i % 4) {
                    case 0 -> { expect[i] = rnd.nextLong(); args.ptr(expect[i]); }
                    case 1 -> { expect[i] = rnd.nextInt(); args.i32((int) expect[i]); }
                    case 2 -> { expect[i] = rnd.nextLong(); args.i64(expect[i]); }
                    default -> { float f = rnd.nextFloat() - 0.5f; expect[i] = Float.floatToRawIntBits(f); args.f32(f); }
                }
            }
            MemorySegment params = args.layout(scratch);
            assertTrue(params.byteSize() >= count * ValueLayout.ADDRESS.byteSize());
            for (int i = 0; i < count; i++) {
                MemorySegment slot = params.getAtIndex(ValueLayout.ADDRESS, i).reinterpret(KernelArgs.SLOT_BYTES);
                assertEquals(0, slot.address() % 8, "slot " + i + " is 8-byte aligned");
                if (i % 2 == 0) assertEquals(expect[i], slot.get(ValueLayout.JAVA_LONG, 0), "round " + round + " slot " + i);
                else assertEquals((int) expect[i], slot.get(ValueLayout.JAVA_INT, 0), "round " + round + " slot " + i);
            }
        }
        assertTrue(scratch.capacity() >= initial + 5);
    }

    @Test
    void noArgumentsStillGivesAValidArray() {
        try (Arena a = Arena.ofConfined()) {
            MemorySegment p = KernelArgs.of().layout(a);
            assertTrue(p.byteSize() >= ValueLayout.ADDRESS.byteSize());
            assertTrue(p.address() != 0);
        }
    }

    @Test
    void describesItselfForErrorMessages() {
        assertEquals("KernelArgs(ptr=0x1000, i32=-3, i64=7, f32=0.5)",
                KernelArgs.of().ptr(0x1000).i32(-3).i64(7).f32(0.5f).toString());
    }
}
