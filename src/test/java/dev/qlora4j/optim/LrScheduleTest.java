package dev.qlora4j.optim;

import org.junit.jupiter.api.Test;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

class LrScheduleTest {
    @Test
    void constantAndConstantWithWarmup() {
        assertEquals(1.0, LrSchedule.constant().factor(0));
        assertEquals(1.0, LrSchedule.constant().factor(12345));
        LrSchedule s = LrSchedule.constantWithWarmup(4);
        assertEquals(0.0, s.factor(0));
        assertEquals(0.25, s.factor(1));
        assertEquals(0.75, s.factor(3));
        assertEquals(1.0, s.factor(4));
        assertEquals(1.0, s.factor(100));
    }

    @Test
    void linearWarmupThenDecayToZero() {
        LrSchedule s = LrSchedule.linear(10, 110);
        assertEquals(0.0, s.factor(0));
        assertEquals(0.5, s.factor(5));
        assertEquals(1.0, s.factor(10));
        assertEquals(0.75, s.factor(35)); // (110-35)/100
        assertEquals(0.01, s.factor(109), 1e-15);
        assertEquals(0.0, s.factor(110));
        assertEquals(0.0, s.factor(150), "clamped at 0 past the end");
        assertEquals(2e-4 * 0.75, s.lr(2e-4, 35), 1e-20);
    }

    @Test
    void cosineHalfCycle() {
        LrSchedule s = LrSchedule.cosine(10, 110);
        assertEquals(0.3, s.factor(3), 1e-15);
        assertEquals(1.0, s.factor(10), 1e-15);
        assertEquals(0.5, s.factor(60), 1e-15);                               // progress 0.5: 0.5*(1+cos(pi/2))
        assertEquals(0.5 * (1 + Math.cos(Math.PI * 0.25)), s.factor(35), 1e-15); // progress 0.25
        assertEquals(0.0, s.factor(110), 1e-15);
        // one full cycle (num_cycles 1.0): bottom at progress 0.5, back at the top at the end
        assertEquals(0.0, LrSchedule.cosine(0, 100, 1.0).factor(50), 1e-15);
        assertEquals(1.0, LrSchedule.cosine(0, 100, 1.0).factor(100), 1e-15);
    }

    @Test
    void noWarmupStartsAtFullRate() {
        assertEquals(1.0, LrSchedule.linear(0, 10).factor(0));
        assertEquals(0.9, LrSchedule.linear(0, 10).factor(1), 1e-15);
        assertEquals(1.0, LrSchedule.cosine(0, 10).factor(0));
    }

    @Test
    void warmupRatioIsCeiled() {
        assertEquals(8, LrSchedule.warmupSteps(0, 0.07, 100)); // Python: ceil(100 * 0.07) = ceil(7.000000000000001)
        assertEquals(3, LrSchedule.warmupSteps(0, 0.03, 100)); // 100 * 0.03 == 3.0
        assertEquals(3, LrSchedule.warmupSteps(0, 0.025, 100)); // ceil(2.5)
        assertEquals(7, LrSchedule.warmupSteps(7, 0.5, 100));   // explicit steps win
        assertEquals(0, LrSchedule.warmupSteps(0, 0.0, 100));
    }

    @Test
    void byNameAsGetScheduler() {
        assertEquals(LrSchedule.linear(5, 50), LrSchedule.of("linear", 5, 50));
        assertEquals(LrSchedule.cosine(5, 50), LrSchedule.of("COSINE", 5, 50));
        assertEquals(LrSchedule.constant(), LrSchedule.of("constant", null, null));
        var e = assertThrows(IllegalArgumentException.class, () -> LrSchedule.of("linear", 5, null));
        assertTrue(e.getMessage().contains("num_training_steps"));
        e = assertThrows(IllegalArgumentException.class, () -> LrSchedule.of("polynomial", 5, 50));
        assertTrue(e.getMessage().contains("constant_with_warmup"));
    }
}
