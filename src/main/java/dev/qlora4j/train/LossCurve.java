package dev.qlora4j.train;

import org.knowm.xchart.BitmapEncoder;
import org.knowm.xchart.XYChart;
import org.knowm.xchart.XYChartBuilder;
import org.knowm.xchart.style.markers.SeriesMarkers;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/** output_dir/loss_curve.png: train loss and eval loss against the optimizer step (XChart, headless). */
public final class LossCurve {
    public static final String FILE = "loss_curve.png";

    private LossCurve() {}

    /**
     * Draws the "loss" and "eval_loss" entries of a log_history; returns false (and writes nothing)
     * when there is no loss to draw.
     */
    public static boolean write(Path file, List<Map<String, Object>> logHistory) {
        List<Double> ts = new ArrayList<>(), tl = new ArrayList<>(), es = new ArrayList<>(), el = new ArrayList<>();
        for (Map<String, Object> e : logHistory) {
            if (!(e.get("step") instanceof Number step)) continue;
            if (e.get("loss") instanceof Number l && Double.isFinite(l.doubleValue())) {
                ts.add(step.doubleValue());
                tl.add(l.doubleValue());
            }
            if (e.get("eval_loss") instanceof Number l && Double.isFinite(l.doubleValue())) {
                es.add(step.doubleValue());
                el.add(l.doubleValue());
            }
        }
        if (tl.isEmpty() && el.isEmpty()) return false;
        // no display is needed to draw into an image; set before the first AWT class loads
        if (System.getProperty("java.awt.headless") == null) System.setProperty("java.awt.headless", "true");
        XYChart chart = new XYChartBuilder().width(800).height(500).title("Loss").xAxisTitle("step").yAxisTitle("loss").build();
        chart.getStyler().setLegendPosition(org.knowm.xchart.style.Styler.LegendPosition.InsideNE);
        if (!tl.isEmpty()) chart.addSeries("train loss", ts, tl).setMarker(tl.size() > 50 ? SeriesMarkers.NONE : SeriesMarkers.CIRCLE);
        if (!el.isEmpty()) chart.addSeries("eval loss", es, el).setMarker(SeriesMarkers.DIAMOND);
        try {
            byte[] png = BitmapEncoder.getBitmapBytes(chart, BitmapEncoder.BitmapFormat.PNG);
            TrainJson.writeAtomically(file, png);
        } catch (IOException e) {
            throw new UncheckedIOException("cannot draw " + file + ": " + e.getMessage(), e);
        }
        return true;
    }
}
