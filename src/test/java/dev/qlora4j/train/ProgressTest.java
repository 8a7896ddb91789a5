package dev.qlora4j.train;

import org.junit.jupiter.api.Test;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.LinkedHashMap;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertTrue;

class ProgressTest {
    private static Map<String, Object> entry(long step) {
        Map<String, Object> e = new LinkedHashMap<>();
        e.put("loss", 2.34567);
        e.put("grad_norm", 0.5);
        e.put("learning_rate", 1e-4);
        e.put("epoch", 0.5);
        e.put("step", step);
        e.put("tokens_per_second", 12345.0);
        return e;
    }

    @Test
    void plainLinesCarryTheFieldsAndMemory() {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        PlainProgress p = new PlainProgress(new PrintStream(bytes, true, StandardCharsets.UTF_8), () -> "mem 3.1/4.0 GiB");
        p.start(0, 10);
        p.step(5, 2.3, 1e-4, 100);
        p.log(entry(5));
        p.close();
        String out = bytes.toString(StandardCharsets.UTF_8);
        assertTrue(out.contains("step 5/10 | loss 2.3457 | lr 1.000e-04 | grad_norm 0.5000 | tok/s 12.3k | epoch 0.50 | eta "), out);
        assertTrue(out.contains("| mem 3.1/4.0 GiB"), out);
    }

    @Test
    void terminalBarRendersStepsAndPrintsEvaluations() {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        TerminalProgress p = new TerminalProgress(new PrintStream(bytes, true, StandardCharsets.UTF_8), () -> "mem 1.0/2.0 GiB");
        p.start(0, 4);
        p.step(1, 2.5, 1e-4, 1000);
        p.step(2, 2.4, 1e-4, 1000);
        Map<String, Object> ev = new LinkedHashMap<>();
        ev.put("eval_loss", 2.2);
        ev.put("step", 2L);
        p.log(ev);
        p.close();
        String out = bytes.toString(StandardCharsets.UTF_8);
        assertTrue(out.contains("train"), out);
        assertTrue(out.contains("loss 2.4000") && out.contains("mem 1.0/2.0 GiB"), out);
        assertTrue(out.contains("eval_loss 2.2000"), out);
    }
}
