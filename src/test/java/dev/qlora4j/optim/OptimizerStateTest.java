package dev.qlora4j.optim;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.function.Function;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

class OptimizerStateTest {
    @TempDir
    Path dir;

    /** Trains 3 steps, saves, continues 3 steps; a fresh optimizer loaded from the file must end identical. */
    private void resumeIsExact(Function<List<Param>, Optimizer> make, int n) {
        Random r = new Random(17);
        float[] p = AdamWTest.gaussian(r, n, 1);
        float[] b = AdamWTest.gaussian(r, 64, 1);
        float[] gp = new float[n], gb = new float[64];
        List<float[]> gradsP = new ArrayList<>(), gradsB = new ArrayList<>();
        for (int s = 0; s < 6; s++) {
            gradsP.add(AdamWTest.gaussian(r, n, 0.1));
            gradsB.add(AdamWTest.gaussian(r, 64, 0.1));
        }
        Optimizer opt = make.apply(List.of(Param.of("layers.0.w", p, gp), Param.of("layers.0.bias", b, gb)));
        for (int s = 0; s < 3; s++) {
            System.arraycopy(gradsP.get(s), 0, gp, 0, n);
            System.arraycopy(gradsB.get(s), 0, gb, 0, 64);
            opt.step();
        }
        Path file = dir.resolve(opt.name() + ".safetensors");
        OptimizerState.save(file, opt);
        float[] p2 = p.clone(), b2 = b.clone(), gp2 = new float[n], gb2 = new float[64];
        Optimizer resumed = make.apply(List.of(Param.of("layers.0.w", p2, gp2), Param.of("layers.0.bias", b2, gb2)));
        OptimizerState.load(file, resumed);
        for (int s = 3; s < 6; s++) {
            System.arraycopy(gradsP.get(s), 0, gp, 0, n);
            System.arraycopy(gradsB.get(s), 0, gb, 0, 64);
            System.arraycopy(gradsP.get(s), 0, gp2, 0, n);
            System.arraycopy(gradsB.get(s), 0, gb2, 0, 64);
            opt.step();
            resumed.step();
        }
        assertArrayEquals(p, p2, opt.name());
        assertArrayEquals(b, b2, opt.name());
    }

    @Test
    void adamWResumes() {
        resumeIsExact(ps -> new AdamW(ParamGroups.split(ps, 0.01), AdamWConfig.torchDefaults()), 300);
    }

    @Test
    void adamW8bitResumesWithBothStateKinds() {
        resumeIsExact(ps -> new AdamW8bit(ParamGroups.split(ps, 0.01), AdamW8bitConfig.bnbDefaults()), 5000);
    }

    @Test
    void sgdResumes() {
        resumeIsExact(ps -> Sgd.of(ps, SgdConfig.momentum(0.01, 0.9)), 300);
    }

    @Test
    void mismatchesAreExplained() {
        float[] p = new float[10];
        List<Param> ps = List.of(Param.of("w", p, new float[10]));
        AdamW adam = AdamW.of(ps, AdamWConfig.torchDefaults());
        adam.step();
        Path file = dir.resolve("opt.safetensors");
        OptimizerState.save(file, adam);

        var e = assertThrows(IllegalArgumentException.class, () -> OptimizerState.load(file, Sgd.of(ps, SgdConfig.momentum(0.1, 0.9))));
        assertTrue(e.getMessage().contains("written by optimizer AdamW but resuming with SGD"), e.getMessage());

        e = assertThrows(IllegalArgumentException.class,
                () -> OptimizerState.load(file, AdamW.of(List.of(Param.of("other", new float[10], null)), AdamWConfig.torchDefaults())));
        assertTrue(e.getMessage().contains("'w'") && e.getMessage().contains("does not train"), e.getMessage());

        e = assertThrows(IllegalArgumentException.class,
                () -> OptimizerState.load(file, AdamW.of(List.of(Param.of("w", new float[11], null)), AdamWConfig.torchDefaults())));
        assertTrue(e.getMessage().contains("state.w.exp_avg has 10 elements but the parameter needs 11"), e.getMessage());
    }
}
