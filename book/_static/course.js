// The course book's own script (loaded by book/_ext/course_book.py on every page).
//
// Display equations that fit: MathJax 3 does not break lines, so an equation wider than the text column
// would overflow its box, whose scroll bar many systems show only while scrolling: the equation would look
// cut off. Such an equation is set smaller, just enough to fit, down to MIN_SCALE of its size; below that
// it keeps its size and scrolls (and the book's browser test reports it: split it over lines instead).
(() => {
  const MIN_SCALE = 0.6;
  const SAFETY = 0.98; // fonts round differently from MathJax's own measurements

  function fitDisplayMaths() {
    for (const box of document.querySelectorAll('mjx-container[display="true"]')) {
      if (box.dataset.courseFontSize === undefined) box.dataset.courseFontSize = box.style.fontSize;
      box.style.fontSize = box.dataset.courseFontSize; // MathJax's own size, then measure
      const ratio = box.clientWidth / box.scrollWidth;
      if (ratio >= 1 || ratio * SAFETY < MIN_SCALE) continue;
      const base = parseFloat(getComputedStyle(box).fontSize);
      box.style.fontSize = `${(base * ratio * SAFETY).toFixed(2)}px`;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const startup = window.MathJax && window.MathJax.startup;
    if (!startup || !startup.promise) return; // a page without maths
    startup.promise.then(fitDisplayMaths);
    document.fonts.ready.then(() => startup.promise).then(fitDisplayMaths);
    let pending;
    window.addEventListener("resize", () => {
      clearTimeout(pending);
      pending = setTimeout(fitDisplayMaths, 100);
    });
  });
})();
